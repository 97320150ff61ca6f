"""The adversaries, the kernel designs they meet, and the world each pair is explored in.

| adversary | moves | world |
|---|---|---|
| kernel | any ENCLS leaf with operands from the runtime's domain (EMODPR, EMODT, EBLOCK, EWB, ELDU of any blob it kept (replays), EREMOVE, EAUG, ETRACK or not), PTE changes (mmap/mprotect/remap), AEX of a thread at any step and ERESUME or not, ECALLs in any order (it controls the host) | leaf level |
| thread | a compromised enclave thread: a write primitive (two stores of its choosing, at most twice) on a second TCS, under an honest kernel and host | machine level |
| colluding | kernel + thread | leaf level |
| coprocess | an unprivileged process with its own /dev/sgx_enclave: fills the EPC so the honest kernel reclaims the victim's pages | machine level |
| host | the enclave's own host process compromised (one extra system call at any point: mprotect to RW or RWX, or the design's restrict request with all rights) together with the write bug, under an honest kernel: where the designs' mmap and permission rules matter | machine level |

A malicious kernel is not bound by its driver, so the design it runs does not change what it can
do; what the design changes is the protocol the runtime can follow. That is measured on the
design itself (`kernel_caps`): if its restrict request runs no EMODPR (soft-restrict), a runtime
written for it cannot EACCEPT a restriction and seals by the kernel's word alone.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from ..arch.constants import EnclsLeaf
from .layout import PROT_R, PROT_X, P
from .runtimes import RESTRICT, Runtime, runtime
from .world import KERNEL, THREAD, LeafWorld

COPROCESS = "coprocess"
HOST = "host"  # a compromised host process: any system call on its enclave, ECALLs in any order


@dataclass(frozen=True)
class Adversary:
    name: str
    title: str
    caps: tuple[str, ...]
    level: str  # "leaf" (malicious kernel: the processor model and nothing above) or "machine"


ADVERSARIES: dict[str, Adversary] = {
    a.name: a
    for a in (
        Adversary("kernel", "malicious kernel", (KERNEL,), "leaf"),
        Adversary("thread", "compromised enclave thread (write bug), honest kernel", (THREAD,), "machine"),
        Adversary("colluding", "malicious kernel + compromised enclave thread", (KERNEL, THREAD), "leaf"),
        Adversary("coprocess", "unprivileged co-process with its own /dev/sgx_enclave", (COPROCESS,), "machine"),
        Adversary("host", "compromised host process + compromised enclave thread, honest kernel",
                  (HOST, THREAD), "machine"),
    )
}


def kernels() -> tuple[str, ...]:
    """The kernel designs available on this tree (`Machine(kernel=...)`)."""
    try:
        from ..linux.variants import KERNELS
    except ImportError:  # pragma: no cover - before the design variants existed
        return ("merged",)
    return tuple(KERNELS)


@dataclass(frozen=True)
class KernelCaps:
    """What a design's restrict request does, measured by running it."""

    kernel: str
    restrict_emodpr: bool  # the restrict ioctl runs EMODPR (the enclave can EACCEPT it)


@functools.cache
def kernel_caps(kernel: str) -> KernelCaps:
    """Run the JIT runtime's restrict request on a machine with `kernel`; count EMODPRs."""
    from .machine_world import MachineWorld

    w = MachineWorld(runtime("jit"), (), kernel)
    try:
        assert w.m is not None
        before = w.m.cpu.encls_count[int(EnclsLeaf.EMODPR)]
        while w.pos < len(w.runtime.script) and w.runtime.script[w.pos][0] != RESTRICT:
            for move in w.moves():
                w.step(move)
                break
        if w.pos < len(w.runtime.script):
            w.step(("host",))
        emodpr = w.m.cpu.encls_count[int(EnclsLeaf.EMODPR)] > before
    finally:
        w.close()
    return KernelCaps(kernel, emodpr)


def protocol(rt: Runtime, kernel: str) -> Runtime:
    """The version of `rt` a runtime can follow on `kernel` (see the module docstring)."""
    if not rt.needs_emodpr or kernel_caps(kernel).restrict_emodpr:
        return rt
    prelude = tuple(
        ("pte", P, PROT_R | PROT_X) if m[0] == "emodpr" else m for m in rt.prelude if m[0] != "etrack"
    )
    script = tuple(a for a in rt.script)
    return dataclasses.replace(
        rt, name=f"{rt.name}@{kernel}", knobs=rt.knobs | {"noaccept"}, prelude=prelude, script=script,
        summary=rt.summary + f" (on {kernel}: no EMODPR to EACCEPT, sealed on the kernel's word)",
    )


def make_world(
    runtime_name: str | Runtime,
    adversary: str,
    kernel: str = "merged",
    properties: tuple[str, ...] | None = None,
    **kw: Any,
) -> Any:
    """The world in which `adversary` attacks `runtime_name` on a machine of design `kernel`."""
    rt = runtime(runtime_name) if isinstance(runtime_name, str) else runtime_name
    adv = ADVERSARIES.get(adversary)
    if adv is None:
        raise ValueError(f"no adversary {adversary!r}; choose from {', '.join(ADVERSARIES)}")
    rt = protocol(rt, kernel)
    if adv.level == "leaf":
        return LeafWorld(rt, adv.caps, properties, **kw)
    from .machine_world import MachineWorld

    return MachineWorld(rt, adv.caps, kernel, properties, **kw)
