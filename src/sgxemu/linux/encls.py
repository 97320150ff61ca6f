"""ENCLS as the kernel issues it (encls.h): typed wrappers over a kernel address space.

The kernel sees the EPC through its direct map and passes PAGEINFO/SECINFO/PCMD and page
contents by kernel virtual address. Here the kernel address space is a `FlatMemory` with the EPC
identity-mapped, and operands are staged in a fixed scratch area just before each leaf (the model
is sequential, so one staging area is enough). A leaf's outcome is encoded like the kernel's
`__encls_ret_*` macros: the SGX error code, or SGX_ENCLS_FAULT_FLAG | trap number on a fault.
"""

from __future__ import annotations

import struct

from ..arch.constants import PAGE_SIZE, EnclsLeaf, Vector
from ..hw.faults import SgxFault
from ..hw.memory import FlatMemory
from ..hw.processor import Processor

SGX_ENCLS_FAULT_FLAG = 0x4000_0000
X86_TRAP_PF = int(Vector.PF)

# Scratch layout in kernel memory (below the EPC, which starts far above) [choice].
_PAGEINFO = 0x1000  # 32-byte aligned
_SECINFO = 0x1040  # 64-byte aligned
_PCMD = 0x1080  # 128-byte aligned
_CONTENTS = 0x2000  # page aligned
_SIGSTRUCT = 0x4000  # page aligned, token at +2048 (512-aligned) as in sgx_ioc_enclave_init
_TOKEN = 0x4800
_PAGEINFO_FMT = struct.Struct("<4Q")
_EAUG = EnclsLeaf.EAUG  # (an enum class attribute lookup costs a dict miss: one per fault)


def encls_faulted(ret: int) -> bool:
    return bool(ret & SGX_ENCLS_FAULT_FLAG)


def encls_trapnr(ret: int) -> int:
    return ret & ~SGX_ENCLS_FAULT_FLAG


def encls_failed(ret: int) -> bool:
    """True for an SGX error code or a fault other than #PF (encls.h)."""
    if encls_faulted(ret):
        return encls_trapnr(ret) != X86_TRAP_PF
    return ret != 0


def secinfo(flags: int) -> bytes:
    return struct.pack("<Q", flags) + bytes(56)


class Encls:
    """The kernel's ENCLS front: one instance per machine."""

    def __init__(self, cpu: Processor) -> None:
        self.cpu = cpu
        self.mem = FlatMemory(cpu.epc.base, cpu.epc.end, user=False)
        self.warnings: list[str] = []  # ENCLS_WARN / WARN_ONCE messages, for tests

    def _leaf(self, leaf: EnclsLeaf, rbx: int = 0, rcx: int = 0, rdx: int = 0) -> int:
        try:
            return self.cpu.encls(leaf, rbx, rcx, rdx, mem=self.mem)
        except SgxFault as fault:
            return SGX_ENCLS_FAULT_FLAG | int(fault.vector)

    def warn(self, ret: int, what: str) -> None:
        """ENCLS_WARN: the kernel logs, and carries on."""
        self.warnings.append(f"{what} returned {ret} ({ret:#x})")

    def _pageinfo(self, addr: int, contents: int, metadata: int, secs: int) -> int:
        self.mem.write(_PAGEINFO, _PAGEINFO_FMT.pack(addr, contents, metadata, secs))
        return _PAGEINFO

    # -- the encls.h wrappers ------------------------------------------------------------------
    def ecreate(self, secs_page: bytes, secinfo_flags: int, epc: int) -> int:
        self.mem.write(_CONTENTS, secs_page)
        self.mem.write(_SECINFO, secinfo(secinfo_flags))
        return self._leaf(EnclsLeaf.ECREATE, self._pageinfo(0, _CONTENTS, _SECINFO, 0), epc)

    def eadd(self, addr: int, contents: bytes, secinfo_raw: bytes, secs: int, epc: int) -> int:
        self.mem.write(_CONTENTS, contents)
        self.mem.write(_SECINFO, secinfo_raw)
        return self._leaf(EnclsLeaf.EADD, self._pageinfo(addr, _CONTENTS, _SECINFO, secs), epc)

    def eextend_page(self, secs: int, page: int) -> int:
        """The 16 __eextend calls of sgx_encl_extend; the first failure's outcome, else 0."""
        try:
            self.cpu.encls_eextend_page(secs, page, mem=self.mem)
        except SgxFault as fault:
            return SGX_ENCLS_FAULT_FLAG | int(fault.vector)
        return 0

    def einit(self, sigstruct: bytes, token: bytes, secs: int) -> int:
        self.mem.write(_SIGSTRUCT, sigstruct)
        self.mem.write(_TOKEN, token)
        return self._leaf(EnclsLeaf.EINIT, _SIGSTRUCT, secs, _TOKEN)

    def eremove(self, epc: int) -> int:
        return self._leaf(EnclsLeaf.EREMOVE, 0, epc)

    def epa(self, epc: int) -> int:
        from ..arch.constants import PageType

        return self._leaf(EnclsLeaf.EPA, int(PageType.PT_VA), epc)

    def eblock(self, epc: int) -> int:
        return self._leaf(EnclsLeaf.EBLOCK, 0, epc)

    def etrack(self, epc: int) -> int:
        return self._leaf(EnclsLeaf.ETRACK, 0, epc)

    def ewb(self, epc: int, va_slot: int) -> tuple[int, bytes, bytes]:
        """EWB to the staging area; returns (ret, sealed contents, PCMD) for the backing store."""
        self.mem.write(_CONTENTS, bytes(PAGE_SIZE))
        self.mem.write(_PCMD, bytes(128))
        ret = self._leaf(EnclsLeaf.EWB, self._pageinfo(0, _CONTENTS, _PCMD, 0), epc, va_slot)
        return ret, self.mem.read(_CONTENTS, PAGE_SIZE), self.mem.read(_PCMD, 128)

    def eldu(
        self, addr: int, contents: bytes, pcmd: bytes, secs: int, epc: int, va_slot: int
    ) -> int:
        self.mem.write(_CONTENTS, contents)
        self.mem.write(_PCMD, pcmd)
        return self._leaf(
            EnclsLeaf.ELDU, self._pageinfo(addr, _CONTENTS, _PCMD, secs), epc, va_slot
        )

    def edbgrd(self, addr: int) -> tuple[int, int]:
        """(ret, the quadword read)."""
        ret = self._leaf(EnclsLeaf.EDBGRD, 0, addr)
        value = self.cpu.encls_rbx if not ret and self.cpu.encls_rbx is not None else 0
        return ret, value

    def edbgwr(self, addr: int, value: int) -> int:
        return self._leaf(EnclsLeaf.EDBGWR, value, addr)

    def eaug(self, addr: int, secs: int, epc: int) -> int:
        return self._leaf(_EAUG, self._pageinfo(addr, 0, 0, secs), epc)

    def emodpr(self, secinfo_flags: int, epc: int) -> int:
        self.mem.write(_SECINFO, secinfo(secinfo_flags))
        return self._leaf(EnclsLeaf.EMODPR, _SECINFO, epc)

    def emodt(self, secinfo_flags: int, epc: int) -> int:
        self.mem.write(_SECINFO, secinfo(secinfo_flags))
        return self._leaf(EnclsLeaf.EMODT, _SECINFO, epc)
