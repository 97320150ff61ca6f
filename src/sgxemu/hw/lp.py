"""A logical processor: its enclave-mode registers (the SDM's CR_* state) and its TLB."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .secs import SecsState


class LogicalProcessor:
    """Per-LP state the SDM keeps in internal control registers (SDM Table 41-4)."""

    __slots__ = (
        "index",
        "enclave_mode",
        "secs",
        "tcs_index",
        "tcs_lin",
        "aep",
        "ssa_gpr_index",
        "ssa_gpr_offset",
        "ssa_xsave_index",
        "ssa_frame_lin",
        "saved_fsbase",
        "saved_gsbase",
        "saved_tf",
        "tlb",
        "event_pending",
        "flushes",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.enclave_mode = False
        self.secs: SecsState | None = None  # CR_ACTIVE_SECS
        self.tcs_index = -1  # CR_TCS_PA (as an EPC index)
        self.tcs_lin = 0  # CR_TCS_LA
        self.aep = 0
        # Physical locations of the current SSA frame, cached at entry so AEX cannot fault.
        self.ssa_gpr_index = -1  # CR_GPR_PA page
        self.ssa_gpr_offset = 0
        self.ssa_xsave_index = -1  # CR_XSAVE_PAGE_0
        self.ssa_frame_lin = 0
        self.saved_fsbase = 0
        self.saved_gsbase = 0
        self.saved_tf = False
        # Cached translations: linear page -> (EPC index or -1, rights R=1 W=2 X=4).
        self.tlb: dict[int, tuple[int, int]] = {}
        # An interrupt waiting to be taken: EINIT reports SGX_UNMASKED_EVENT while set.
        self.event_pending = False
        # How many times the TLB was flushed: an engine that caches translations itself
        # (Unicorn) compares it with the count it last acted on.
        self.flushes = 0

    def flush_tlb(self) -> None:
        self.tlb.clear()
        self.flushes += 1

    def __repr__(self) -> str:
        where = f"inside eid={self.secs.eid}" if self.secs is not None else "outside"
        return f"LogicalProcessor({self.index}, {where})"
