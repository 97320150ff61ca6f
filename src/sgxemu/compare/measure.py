"""Run flows on kernels and read what they cost from the machine's own counters.

Every figure is a difference of counters the model keeps anyway (system calls and ioctls per
process, ENCLS/ENCLU per leaf in the processor, ETRACKs, IPIs and AEXes in `Machine.stats`),
taken around the flow's body: nothing here is written down by hand.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..arch.constants import EnclsLeaf, EncluLeaf
from ..linux.variants import KERNELS
from .flows import FLOWS, Flow
from .runtime import ComparisonEnclave, FlowFailed, Runtime, default_enclave


@dataclass
class Snapshot:
    syscalls: Counter[str]
    ioctls: Counter[int]
    encls: list[int]
    enclu: list[int]
    etracks: int
    ipis: int
    aexes: int
    page_faults: int
    pages_reclaimed: int
    ksgxd_runs: int

    @classmethod
    def take(cls, rt: Runtime) -> Snapshot:
        m, p = rt.m, rt.proc
        return cls(
            Counter(p.syscalls), Counter(p.ioctls), list(m.cpu.encls_count),
            list(m.cpu.enclu_count), m.stats.etracks, m.stats.ipis, m.stats.aexes,
            p.page_faults, m.stats.pages_reclaimed, m.stats.ksgxd_runs,
        )


@dataclass
class FlowResult:
    """One flow on one kernel."""

    flow: str
    kernel: str
    n: int
    ok: bool
    failed_step: str = ""
    reason: str = ""
    syscalls: dict[str, int] = field(default_factory=dict)
    ioctls: dict[str, int] = field(default_factory=dict)
    encls: dict[str, int] = field(default_factory=dict)
    enclu: dict[str, int] = field(default_factory=dict)
    etracks: int = 0
    ipis: int = 0
    eexits: int = 0
    aexes: int = 0
    page_faults: int = 0
    pages_reclaimed: int = 0
    ksgxd_runs: int = 0
    enforcement: dict[str, str] = field(default_factory=dict)
    first_page: str = ""  # rights of the flow's first page after the body: VMA, PTE, EPCM

    @property
    def outcome(self) -> str:
        return "works" if self.ok else f"fails at {self.failed_step}: {self.reason}"

    @property
    def total_syscalls(self) -> int:
        return sum(self.syscalls.values())

    @property
    def total_ioctls(self) -> int:
        return sum(self.ioctls.values())

    @property
    def total_encls(self) -> int:
        return sum(self.encls.values())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = self.outcome
        return d


def _diff(rt: Runtime, before: Snapshot, after: Snapshot, result: FlowResult) -> None:
    names = rt.client.ioctl_names
    result.syscalls = {k: v for k, v in (after.syscalls - before.syscalls).items() if v}
    result.ioctls = {
        names.get(cmd, f"{cmd:#x}"): v for cmd, v in (after.ioctls - before.ioctls).items() if v
    }
    result.encls = {
        EnclsLeaf(i).name: a - b
        for i, (a, b) in enumerate(zip(after.encls, before.encls, strict=True))
        if a != b and i in EnclsLeaf._value2member_map_
    }
    result.enclu = {
        EncluLeaf(i).name: a - b
        for i, (a, b) in enumerate(zip(after.enclu, before.enclu, strict=True))
        if a != b and i in EncluLeaf._value2member_map_
    }
    result.etracks = after.etracks - before.etracks
    result.ipis = after.ipis - before.ipis
    result.eexits = result.enclu.get("EEXIT", 0)
    result.aexes = after.aexes - before.aexes
    result.page_faults = after.page_faults - before.page_faults
    result.pages_reclaimed = after.pages_reclaimed - before.pages_reclaimed
    result.ksgxd_runs = after.ksgxd_runs - before.ksgxd_runs


def run_flow(
    flow: Flow | str, kernel: str, n: int | None = None, enclave: ComparisonEnclave | None = None
) -> FlowResult:
    """Set up a fresh machine with `kernel`, run the flow's setup, measure its body, probe."""
    if isinstance(flow, str):
        flow = FLOWS[flow]
    size = flow.n if n is None else n
    rt = Runtime(kernel, enclave if enclave is not None else default_enclave(), epc_size=flow.epc_size)
    result = FlowResult(flow.name, kernel, size, ok=True)
    try:
        if flow.setup is not None:
            flow.setup(rt, size)
        before = Snapshot.take(rt)
        try:
            flow.body(rt, size)
        except FlowFailed as e:
            result.ok, result.failed_step, result.reason = False, e.step, e.reason
        _diff(rt, before, Snapshot.take(rt), result)
        result.first_page = rt.page_rights(rt.base + rt.free_offset)
        if result.ok and flow.probe is not None:
            flow.probe(rt, size)
        result.enforcement = dict(rt.enforcement)
    finally:
        rt.close()
    return result


def run_comparison(
    flows: Iterable[str] | None = None,
    kernels: Iterable[str] | None = None,
    enclave: ComparisonEnclave | None = None,
    *,
    on_start: Callable[[str, str], None] | None = None,
    on_done: Callable[[FlowResult, int, int], None] | None = None,
) -> list[FlowResult]:
    """Every flow on every kernel (flow-major order). For a progress display: `on_start(flow,
    kernel)` before each cell, `on_done(result, done, total)` after it (done == total last)."""
    flow_names = list(flows) if flows is not None else list(FLOWS)
    kernel_names = list(kernels) if kernels is not None else list(KERNELS)
    for name in flow_names:
        if name not in FLOWS:
            raise ValueError(f"unknown flow {name!r}; choose from {', '.join(FLOWS)}")
    for name in kernel_names:
        if name not in KERNELS:
            raise ValueError(f"unknown kernel {name!r}; choose from {', '.join(KERNELS)}")
    cells = [(f, k) for f in flow_names for k in kernel_names]
    results: list[FlowResult] = []
    for f, k in cells:
        if on_start is not None:
            on_start(f, k)
        results.append(run_flow(f, k, enclave=enclave))
        if on_done is not None:
            on_done(results[-1], len(results), len(cells))
    return results
