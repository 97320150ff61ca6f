"""Hidden state of an SECS page: what the processor keeps inside the SECS and software cannot read.

SDM 38.7 and the ECREATE/EINIT pseudocode: EID, the running MRENCLAVE, INIT, PADDING, the child
count and the set of logical processors executing inside. The epoch fields are this model's
rendering of the ETRACK tracking cycle [model, spec 6.4].
"""

from __future__ import annotations

from ..arch.constants import Attribute
from .measurement import MeasurementState

# Plain ints: IntFlag arithmetic is slow on the leaf paths.
_INIT = int(Attribute.INIT)
_DEBUG = int(Attribute.DEBUG)
_MODE64BIT = int(Attribute.MODE64BIT)


class SecsState:
    """One enclave's SECS as the processor sees it."""

    __slots__ = (
        "index",
        "eid",
        "baseaddr",
        "size",
        "ssaframesize",
        "miscselect",
        "attributes",
        "xfrm",
        "config_id",
        "configsvn",
        "isvprodid",
        "isvsvn",
        "isvextprodid",
        "isvfamilyid",
        "mrenclave",
        "mrsigner",
        "padding",
        "measurement",
        "chldcnt",
        "inside",
        "epoch",
    )

    def __init__(
        self,
        index: int,
        eid: int,
        baseaddr: int,
        size: int,
        ssaframesize: int,
        miscselect: int,
        attributes: int,
        xfrm: int,
        config_id: bytes = bytes(64),
        configsvn: int = 0,
    ) -> None:
        self.index = index  # EPC page index of the SECS (ENCLAVECONTEXT)
        self.eid = eid
        self.baseaddr = baseaddr
        self.size = size
        self.ssaframesize = ssaframesize
        self.miscselect = miscselect
        self.attributes = attributes
        self.xfrm = xfrm
        self.config_id = config_id
        self.configsvn = configsvn
        self.isvprodid = 0
        self.isvsvn = 0
        self.isvextprodid = bytes(16)
        self.isvfamilyid = bytes(16)
        self.mrenclave = bytes(32)
        self.mrsigner = bytes(32)
        self.padding = bytes(352)
        self.measurement: MeasurementState | None = MeasurementState()
        self.chldcnt = 0
        # Logical processors inside the enclave -> the epoch each entered in.
        self.inside: dict[int, int] = {}
        self.epoch = 0

    @property
    def init(self) -> bool:
        return bool(self.attributes & _INIT)

    @property
    def debug(self) -> bool:
        return bool(self.attributes & _DEBUG)

    @property
    def mode64bit(self) -> bool:
        return bool(self.attributes & _MODE64BIT)

    def in_elrange(self, lin: int) -> bool:
        return self.baseaddr <= lin < self.baseaddr + self.size

    def tracked_since(self, epoch: int) -> bool:
        """True when a tracking cycle begun after `epoch` has completed (EWB, EACCEPT)."""
        if epoch < 0:
            return True
        if self.epoch <= epoch:
            return False
        return all(entered > epoch for entered in self.inside.values())

    def tracking_in_progress(self) -> bool:
        """True while a logical processor that entered before the last ETRACK is still inside."""
        return any(entered < self.epoch for entered in self.inside.values())

    def __repr__(self) -> str:
        return (
            f"SecsState(eid={self.eid}, base={self.baseaddr:#x}, size={self.size:#x}, "
            f"init={self.init}, children={self.chldcnt}, inside={self.inside}, epoch={self.epoch})"
        )
