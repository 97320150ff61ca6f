"""ELDB: load an evicted page back into the EPC, BLOCKED (SDM ELDB/ELDU, spec 3.12 and 11)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arch.constants import EnclsLeaf
from ..leaves import encls_leaf
from .eld import load_page

if TYPE_CHECKING:
    from ..memory import AddressSpace
    from ..processor import Processor


@encls_leaf(EnclsLeaf.ELDB)
def eldb(cpu: Processor, mem: AddressSpace, rbx: int, rcx: int, rdx: int) -> int:
    return load_page(cpu, mem, rbx, rcx, rdx, blocked=True)
