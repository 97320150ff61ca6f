"""EEXIT: leave the enclave to RBX; RCX receives the AEP (SDM EEXIT, spec 4.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import EncluLeaf
from ..enclave_mode import leave
from ..faults import GeneralProtection
from ..leaves import enclu_leaf
from ..operands import CANONICAL_HIGH
from ..regs import Reg

if TYPE_CHECKING:
    from ..lp import LogicalProcessor
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..regs import RegisterFile


_RBX = Reg.RBX
_RCX = Reg.RCX
_RIP = Reg.RIP


@enclu_leaf(EncluLeaf.EEXIT)
def eexit(cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace) -> None:
    values = regs.get_all()
    target = values[_RBX]
    top = target >> 47
    if top and top != CANONICAL_HIGH:  # bits 63:47 neither all zeros nor all ones
        raise GeneralProtection()
    aep = lp.aep
    leave(cpu, lp, values)
    values[_RIP] = target
    values[_RCX] = aep  # RAX keeps 4; no other register changes: the runtime scrubs them
    regs.set_all(values)
