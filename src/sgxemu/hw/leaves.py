"""Leaf registry: each leaf lives in its own module under `encls/` or `enclu/` and registers here.

ENCLS leaves take (processor, address space, RBX, RCX, RDX) and return the RAX error code (0 for
leaves that have none); ENCLU leaves take (processor, logical processor, registers, address
space) and set their own register results. Both raise `SgxFault`s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from ..arch.constants import EnclsLeaf, EncluLeaf, SgxError

if TYPE_CHECKING:
    from .lp import LogicalProcessor
    from .memory import AddressSpace
    from .processor import Processor
    from .regs import RegisterFile

EnclsFn: TypeAlias = "Callable[[Processor, AddressSpace, int, int, int], int]"
EncluFn: TypeAlias = "Callable[[Processor, LogicalProcessor, RegisterFile, AddressSpace], None]"

ENCLS_LEAVES: dict[int, EnclsFn] = {}
ENCLU_LEAVES: dict[int, EncluFn] = {}

SGX2_ENCLS = frozenset({EnclsLeaf.EAUG, EnclsLeaf.EMODPR, EnclsLeaf.EMODT})
SGX2_ENCLU = frozenset({EncluLeaf.EACCEPT, EncluLeaf.EMODPE, EncluLeaf.EACCEPTCOPY})

# Codes reported with CF=1 (and ZF=0) rather than ZF=1 (SDM EBLOCK, EWB).
CF_CODES: dict[int, frozenset[int]] = {
    EnclsLeaf.EBLOCK: frozenset(
        {SgxError.SGX_BLKSTATE, SgxError.SGX_NOTBLOCKABLE, SgxError.SGX_PG_IS_SECS}
    ),
    EnclsLeaf.EWB: frozenset({SgxError.SGX_VA_SLOT_OCCUPIED}),
}


def encls_leaf(leaf: EnclsLeaf) -> Callable[[EnclsFn], EnclsFn]:
    def register(fn: EnclsFn) -> EnclsFn:
        ENCLS_LEAVES[leaf] = fn
        return fn

    return register


def enclu_leaf(leaf: EncluLeaf) -> Callable[[EncluFn], EncluFn]:
    def register(fn: EncluFn) -> EncluFn:
        ENCLU_LEAVES[leaf] = fn
        return fn

    return register


def load_all() -> None:
    """Import every leaf module so that it registers."""
    import importlib
    import pkgutil

    from . import encls, enclu

    for package in (encls, enclu):
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
