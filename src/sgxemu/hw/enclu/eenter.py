"""EENTER: enter an enclave through a TCS (SDM EENTER, spec 4.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import EncluLeaf
from ..enclave_mode import check_entry, enter_at_oentry
from ..leaves import enclu_leaf

if TYPE_CHECKING:
    from ..lp import LogicalProcessor
    from ..memory import AddressSpace
    from ..processor import Processor
    from ..regs import RegisterFile


@enclu_leaf(EncluLeaf.EENTER)
def eenter(cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace) -> None:
    values = regs.get_all()
    enter_at_oentry(cpu, lp, values, check_entry(cpu, values, mem, False))
    regs.set_all(values)
