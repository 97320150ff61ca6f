"""Offline MRENCLAVE computation, replaying what ECREATE/EADD/EEXTEND would hash.

Built on `sgxemu.hw.measurement` so tools and the emulated processor share one definition.
"""

from __future__ import annotations

from sgxemu.arch.constants import (
    EEXTEND_CHUNK,
    PAGE_SIZE,
    SECINFO_PAGE_TYPE_MASK,
    SECINFO_PAGE_TYPE_SHIFT,
    SECINFO_PERM_MASK,
    PageType,
)
from sgxemu.arch.structs import Buffer
from sgxemu.hw.measurement import MeasurementState


class EnclaveMeasurer:
    """Measure an enclave offline: ECREATE(size, ssaframesize) at construction.

    Offsets are relative to the enclave base (LINADDR − BASEADDR). `size` is hashed as
    given (no power-of-two check here: that is ECREATE's SECS validation, not measurement).
    """

    def __init__(self, size: int, ssaframesize: int = 1) -> None:
        self.size = size
        self.ssaframesize = ssaframesize
        self._state = MeasurementState()
        self._state.ecreate(ssaframesize, size)

    @property
    def update_counter(self) -> int:
        """64-byte blocks hashed so far (the SECS update counter)."""
        return self._state.update_counter

    def eadd(self, offset: int, secinfo_flags: int) -> None:
        """One EADD record. A TCS must come with R/W/X = 0 (SDM EADD clears them before
        hashing; Linux rejects such a SECINFO, so a signer must not produce one)."""
        if offset % PAGE_SIZE:
            raise ValueError(f"EADD offset {offset:#x} not page aligned")
        page_type = (secinfo_flags & SECINFO_PAGE_TYPE_MASK) >> SECINFO_PAGE_TYPE_SHIFT
        if page_type == PageType.PT_TCS and secinfo_flags & SECINFO_PERM_MASK:
            raise ValueError(
                f"TCS page at {offset:#x} must have R/W/X = 0, flags {secinfo_flags:#x}"
            )
        self._state.eadd(offset, secinfo_flags)

    def eextend(self, offset: int, chunk256: Buffer) -> None:
        """One EEXTEND record: header + 256 data bytes."""
        self._state.eextend(offset, chunk256)

    def add_page(self, offset: int, data: Buffer, secinfo_flags: int, measure: bool = True) -> None:
        """EADD a page, then (if `measure`) EEXTEND it in 16 chunks, as the selftest signer
        does; unmeasured pages (e.g. heap) get the EADD record only."""
        if len(data) != PAGE_SIZE:
            raise ValueError(f"page data must be {PAGE_SIZE} bytes, got {len(data)}")
        self.eadd(offset, secinfo_flags)
        if measure:
            view = memoryview(data)
            for i in range(0, PAGE_SIZE, EEXTEND_CHUNK):
                self._state.eextend(offset + i, view[i : i + EEXTEND_CHUNK])

    def mrenclave(self) -> bytes:
        """The MRENCLAVE EINIT would compute now; measuring may continue afterwards."""
        return self._state.final()
