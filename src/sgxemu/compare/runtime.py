"""The enclave runtime the comparison drives: one machine per run, the selftest enclave with a
larger ELRANGE, and a client per kernel ABI (what an SDK's EDMM layer would be).

The enclave is the scripted selftest program (protocol ops 0-7, unchanged) with one more entry
behaviour, selected by a register so the op protocol is untouched: RSI = `EXEC_MARK` makes the
thread jump to RDX, execute one (notional) instruction there, and EEXIT. That fetch goes through
the same PTE and EPCM execute checks as any enclave instruction.
"""

from __future__ import annotations

import ctypes
import errno
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from .. import uapi
from ..arch.constants import PAGE_SIZE
from ..exec.scripted import ScriptedContext, ScriptedEngine, ScriptedEntry, ScriptedProgram, Step
from ..exec.scripted_selftest import selftest_program
from ..hw.memory import PTE_P, PTE_W, PTE_XD
from ..linux.enclcall import EnclCaller
from ..linux.load import encl_build, sign
from ..linux.machine import Machine
from ..linux.mman import MAP_FIXED, MAP_SHARED
from ..loader.selftest_layout import EnclaveImage, load_segments
from ..sign import generate_key
from ..testenclave import build_test_enclave
from ..testenclave import protocol as P
from ..uapi_variants import v1 as uapi_v1
from ..uapi_variants import v2 as uapi_v2

PAGE = PAGE_SIZE
EXEC_MARK = 0x4A49_545F_4558_4543  # "JIT_EXEC": RSI value that selects the execute entry
ELRANGE = 1 << 20  # 256 pages: room for EAUG beyond the 10 pages the image adds
SECINFO_REG = uapi.SGX_SECINFO_REG
SECINFO_PENDING, SECINFO_MODIFIED, SECINFO_PR = 0x08, 0x10, 0x20


class FlowFailed(Exception):
    """A flow step that did not work: which step, and the errno or fault it got."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class Fault:
    """An exception the vDSO reported (struct sgx_enclave_run)."""

    vector: int
    error_code: int
    addr: int

    def __str__(self) -> str:
        if self.vector == 14:
            return f"#PF {self.error_code:#x}"
        return f"vector {self.vector}"


@dataclass(frozen=True)
class ComparisonEnclave:
    image: EnclaveImage
    sigstruct: bytes
    program: ScriptedProgram


def _exec_entry(fn: Callable[[ScriptedContext], Step]) -> Callable[[ScriptedContext], Step]:
    def entry(ctx: ScriptedContext) -> Step:
        if ctx.rsi != EXEC_MARK:
            yield from fn(ctx)
            return
        back = ctx.rip
        ctx.jump(ctx.rdx)
        yield
        ctx.jump(back)  # this step fetched at RDX: the generated code ran
        yield
        ctx.eexit()

    return entry


def comparison_program(image: EnclaveImage) -> ScriptedProgram:
    base = selftest_program(image)
    return ScriptedProgram(
        {off: ScriptedEntry(_exec_entry(e.fn), e.stack) for off, e in base.entries.items()}
    )


def make_enclave(
    elf_path: Path | str | None = None, key: rsa.RSAPrivateKey | None = None
) -> ComparisonEnclave:
    """The selftest enclave (default 1-page heap) in a 1 MiB ELRANGE, signed."""
    image = load_segments(elf_path if elf_path is not None else build_test_enclave())
    image = replace(image, encl_size=ELRANGE)
    sigstruct = sign(image, key if key is not None else generate_key())
    return ComparisonEnclave(image, sigstruct, comparison_program(image))


@functools.lru_cache(maxsize=1)
def default_enclave() -> ComparisonEnclave:
    return make_enclave()


# -- clients: the runtime's view of each kernel ABI ----------------------------------------------
class MergedClient:
    """Linux >= 6.0: RESTRICT + EACCEPT(PR); relaxing is EMODPE alone."""

    ioctl_names: dict[int, str] = {
        uapi.SGX_IOC_ENCLAVE_CREATE: "CREATE",
        uapi.SGX_IOC_ENCLAVE_ADD_PAGES: "ADD_PAGES",
        uapi.SGX_IOC_ENCLAVE_INIT: "INIT",
        uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS: "RESTRICT_PERMISSIONS",
        uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES: "MODIFY_TYPES",
        uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES: "REMOVE_PAGES",
    }

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def restrict(self, offset: int, length: int, perms: int) -> bool:
        """Lower the rights of a range; True when the enclave must EACCEPT(perms|REG|PR)."""
        arg = uapi.sgx_enclave_restrict_permissions(offset, length, perms)
        self.rt.ioctl("RESTRICT_PERMISSIONS", uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, arg)
        return True

    def announce(self, offset: int, length: int, perms: int) -> bool:
        """Tell the kernel about rights the enclave raised with EMODPE; True: EACCEPT(PR)."""
        return False  # the kernel keeps no record of current rights

    def modify_type(self, offset: int, length: int, page_type: int) -> None:
        arg = uapi.sgx_enclave_modify_types(offset, length, page_type)
        self.rt.ioctl("MODIFY_TYPES", uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, arg)

    def remove(self, offset: int, length: int) -> None:
        arg = uapi.sgx_enclave_remove_pages(offset, length)
        self.rt.ioctl("REMOVE_PAGES", uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, arg)


class V1Client(MergedClient):
    """V1: PAGE_MODP for every change (a relax is a restriction, EACCEPT(PR) after it)."""

    ioctl_names = {**MergedClient.ioctl_names, **{
        uapi_v1.SGX_IOC_PAGE_MODP: "PAGE_MODP",
        uapi_v1.SGX_IOC_PAGE_MODT: "PAGE_MODT",
        uapi_v1.SGX_IOC_PAGE_REMOVE: "PAGE_REMOVE",
    }}

    def restrict(self, offset: int, length: int, perms: int) -> bool:
        self.rt.ioctl("PAGE_MODP", uapi_v1.SGX_IOC_PAGE_MODP, uapi_v1.sgx_page_modp(offset, length, perms))
        return True

    def announce(self, offset: int, length: int, perms: int) -> bool:
        return self.restrict(offset, length, perms)

    def modify_type(self, offset: int, length: int, page_type: int) -> None:
        self.rt.ioctl("PAGE_MODT", uapi_v1.SGX_IOC_PAGE_MODT, uapi_v1.sgx_page_modt(offset, length, page_type))

    def remove(self, offset: int, length: int) -> None:
        self.rt.ioctl("PAGE_REMOVE", uapi_v1.SGX_IOC_PAGE_REMOVE, uapi_v1.sgx_page_remove(offset, length))


class V2Client(MergedClient):
    """V2: RESTRICT (EMODPR) and RELAX (kernel record only), SECINFO pointers."""

    ioctl_names = {**MergedClient.ioctl_names, **{
        uapi_v2.SGX_IOC_ENCLAVE_RELAX_PERMISSIONS: "RELAX_PERMISSIONS",
        uapi_v2.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS: "RESTRICT_PERMISSIONS",
        uapi_v2.SGX_IOC_ENCLAVE_MODIFY_TYPE: "MODIFY_TYPE",
        uapi_v2.SGX_IOC_ENCLAVE_REMOVE_PAGES: "REMOVE_PAGES",
    }}

    def _secinfo(self, flags: int) -> int:
        self.rt.proc.put(self.rt.secinfo, uapi.sgx_secinfo(flags=flags))
        return self.rt.secinfo

    def restrict(self, offset: int, length: int, perms: int) -> bool:
        arg = uapi_v2.sgx_enclave_restrict_perm(offset, length, self._secinfo(perms))
        self.rt.ioctl("RESTRICT_PERMISSIONS", uapi_v2.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, arg)
        return True

    def announce(self, offset: int, length: int, perms: int) -> bool:
        arg = uapi_v2.sgx_enclave_relax_perm(offset, length, self._secinfo(perms))
        self.rt.ioctl("RELAX_PERMISSIONS", uapi_v2.SGX_IOC_ENCLAVE_RELAX_PERMISSIONS, arg)
        return False

    def modify_type(self, offset: int, length: int, page_type: int) -> None:
        arg = uapi_v2.sgx_enclave_modt(offset, length, self._secinfo(page_type << 8))
        self.rt.ioctl("MODIFY_TYPE", uapi_v2.SGX_IOC_ENCLAVE_MODIFY_TYPE, arg)

    def remove(self, offset: int, length: int) -> None:
        arg = uapi_v2.sgx_enclave_remove_pages(offset, length)
        self.rt.ioctl("REMOVE_PAGES", uapi_v2.SGX_IOC_ENCLAVE_REMOVE_PAGES, arg)


class SoftRestrictClient(MergedClient):
    """soft-restrict: RESTRICT sets the kernel's record; nothing to EACCEPT; raising it back is
    the same ioctl with wider rights."""

    def restrict(self, offset: int, length: int, perms: int) -> bool:
        super().restrict(offset, length, perms)
        return False

    def announce(self, offset: int, length: int, perms: int) -> bool:
        return self.restrict(offset, length, perms)


CLIENTS: dict[str, type[MergedClient]] = {
    "merged": MergedClient,
    "v1": V1Client,
    "v2": V2Client,
    "soft-restrict": SoftRestrictClient,
    "always-mmap": MergedClient,
}


# -- one run ------------------------------------------------------------------------------------
class Runtime:
    """A machine with the kernel under test, one process, the enclave built and mapped."""

    def __init__(
        self, kernel: str, enclave: ComparisonEnclave, *, epc_size: int = 4 << 20, **machine: Any
    ) -> None:
        program = enclave.program
        self.kernel = kernel
        self.m = Machine(
            epc_size=epc_size,
            engine=lambda cpu, lp, mem: ScriptedEngine(cpu, lp, mem, program),
            arena_size=1 << 30,
            kernel=kernel,
            **machine,
        )
        self.image = enclave.image
        self.proc = self.m.spawn()
        self.encl = encl_build(self.proc, enclave.image, sigstruct=enclave.sigstruct)
        self.caller = EnclCaller(self.proc, self.encl)
        self.base = self.encl.base
        self.tcs = [self.base + self.image.tcs_offset, self.base + self.image.tcs_offset + PAGE]
        self.free_offset = self.image.src_size  # first ELRANGE offset with no page
        self.secinfo = self.proc.alloc(PAGE)
        self.client = CLIENTS[kernel](self)
        self.enforcement: dict[str, str] = {}
        for tcs in range(len(self.tcs)):  # fault in both threads' pages: not part of any flow
            nop = P.encl_op_header(P.ENCL_OP_NOP)
            self.ok(self.enter(nop, tcs), "warm-up")

    def close(self) -> None:
        self.m.close()

    # -- system calls ---------------------------------------------------------------------------
    def ioctl(self, step: str, request: int, arg: ctypes.Structure) -> None:
        try:
            self.proc.ioctl(self.encl.fd, request, arg)
        except OSError as e:
            raise FlowFailed(step, errno.errorcode.get(e.errno or 0, str(e.errno))) from None

    def mmap(self, offset: int, length: int, prot: int, step: str = "mmap") -> int:
        try:
            return self.proc.mmap(
                self.base + offset, length, prot, MAP_SHARED | MAP_FIXED, self.encl.fd, 0
            )
        except OSError as e:
            raise FlowFailed(step, errno.errorcode.get(e.errno or 0, str(e.errno))) from None

    def mprotect(self, offset: int, length: int, prot: int, step: str = "mprotect") -> None:
        try:
            self.proc.mprotect(self.base + offset, length, prot)
        except OSError as e:
            raise FlowFailed(step, errno.errorcode.get(e.errno or 0, str(e.errno))) from None

    # -- enclave calls (ENCL_CALL); each returns the fault the vDSO reported, if any ------------
    def enter(self, op: ctypes.Structure, tcs: int = 0, leaf: int = uapi.EENTER) -> Fault | None:
        c = self.caller
        c.clear_exc()
        c.run.tcs = self.tcs[tcs]
        ret = c.call(op, leaf)
        assert ret == 0, ret
        return self._fault()

    def _fault(self) -> Fault | None:
        run = self.caller.run
        if run.function == uapi.EEXIT:
            return None
        return Fault(run.exception_vector, run.exception_error_code, run.exception_addr)

    def put(self, addr: int, value: int, tcs: int = 0) -> Fault | None:
        op = P.encl_op_put_to_addr(P.encl_op_header(P.ENCL_OP_PUT_TO_ADDRESS), value, addr)
        return self.enter(op, tcs)

    def resume(self, tcs: int = 0) -> Fault | None:
        """ERESUME the op last run on `tcs` (after its fault was fixed)."""
        c = self.caller
        c.clear_exc()
        c.run.tcs = self.tcs[tcs]
        t = self.proc.main
        assert t.vdso_sgx_enter_enclave(c.op, 0, 0, uapi.ERESUME, 0, 0, c.run) == 0
        return self._fault()

    def get(self, addr: int, tcs: int = 0) -> tuple[int, Fault | None]:
        op = P.encl_op_get_from_addr(P.encl_op_header(P.ENCL_OP_GET_FROM_ADDRESS), 0, addr)
        fault = self.enter(op, tcs)
        return int(self.caller.result.value), fault

    def eaccept(self, addr: int, flags: int, tcs: int = 0) -> tuple[int, Fault | None]:
        op = P.encl_op_eaccept(P.encl_op_header(P.ENCL_OP_EACCEPT), addr, flags, 0)
        fault = self.enter(op, tcs)
        return int(self.caller.result.ret), fault

    def emodpe(self, addr: int, flags: int, tcs: int = 0) -> Fault | None:
        return self.enter(P.encl_op_emodpe(P.encl_op_header(P.ENCL_OP_EMODPE), addr, flags), tcs)

    def execute(self, addr: int, tcs: int = 0) -> Fault | None:
        c = self.caller
        c.clear_exc()
        c.run.tcs = self.tcs[tcs]
        assert self.proc.main.vdso_sgx_enter_enclave(0, EXEC_MARK, addr, uapi.EENTER, 0, 0, c.run) == 0
        return self._fault()

    # -- checked forms: a fault or a failing EACCEPT ends the flow -------------------------------
    def ok(self, fault: Fault | None, step: str) -> None:
        if fault is not None:
            raise FlowFailed(step, str(fault))

    def accept(self, addr: int, flags: int, step: str, tcs: int = 0) -> None:
        ret, fault = self.eaccept(addr, flags, tcs)
        self.ok(fault, step)
        if ret:
            raise FlowFailed(step, f"EACCEPT returned {ret}")

    def grow(self, offset: int, pages: int, prot: int = 3) -> None:
        """Heap growth the EACCEPT way (as setup): map, then EACCEPT every page."""
        self.mmap(offset, pages * PAGE, prot, "mmap heap")
        for i in range(pages):
            self.accept(self.base + offset + i * PAGE, 0x3 | SECINFO_REG | SECINFO_PENDING, "EACCEPT")

    # -- who stopped an access ------------------------------------------------------------------
    def mechanism(self, fault: Fault | None, right: int) -> str:
        """Classify what refused an enclave access: the EPCM (SGX-flagged #PF), the page table
        the user asked for (the VMA lacks the right), or the kernel's record (the VMA allows it
        but the kernel installed a narrower PTE or refused to widen it)."""
        if fault is None:
            return "none (allowed)"
        if fault.vector != 14:
            return f"vector {fault.vector}"
        if fault.error_code & 0x8000:
            return "EPCM"
        vma = self.proc.mm.vma_lookup(fault.addr)
        if vma is None or not vma.flags & right:
            return "page table"
        return "kernel record"

    def page_rights(self, addr: int) -> str:
        """'VMA rw- · PTE r-- · EPCM rw-' for one page, read from the machine's state."""
        def rwx(bits: int) -> str:
            return "".join(c if bits & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))

        parts = []
        vma = self.proc.mm.vma_lookup(addr)
        parts.append(f"VMA {rwx(vma.flags) if vma is not None else 'none'}")
        pte = self.proc.mm.mem.ptes.get(addr >> 12, 0)
        if pte & PTE_P:
            parts.append(f"PTE {rwx(1 | (2 if pte & PTE_W else 0) | (0 if pte & PTE_XD else 4))}")
        else:
            parts.append("PTE none")
        encl = self.proc.fds[self.encl.fd].private_data
        entry = encl.page_array.get(addr >> 12)
        epcm = self.m.cpu.epcm.get(entry.epc_page.index) if entry and entry.epc_page else None
        if epcm is None:
            parts.append("EPCM none" if entry is None else "EPCM (evicted)")
        else:
            parts.append(f"EPCM {rwx(epcm.perms)} {epcm.pt.name}")
        return " · ".join(parts)

    def note(self, permission: str, mechanism: str) -> None:
        self.enforcement[permission] = mechanism
