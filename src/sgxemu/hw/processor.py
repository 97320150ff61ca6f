"""The SGX2 processor: EPC, EPCM, hidden SECS state, logical processors and the leaf fronts.

A pure state machine. It runs nothing and performs no I/O: engines and the kernel model call
`encls`/`enclu` with register values and an `AddressSpace`, and get an error code, updated
registers, or a modelled fault.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..arch.constants import (
    CPUID_EPC_SECTION_VALID,
    FEATURE_CONTROL_LOCK,
    FEATURE_CONTROL_SGX_ENABLE,
    FEATURE_CONTROL_SGX_LC,
    IA32_FEATURE_CONTROL,
    IA32_SGXLEPUBKEYHASH0,
    IA32_SGXLEPUBKEYHASH3,
    INTEL_LE_PUBKEYHASH,
    PAGE_SIZE,
    Attribute,
    EnclsLeaf,
    EncluLeaf,
    Miscselect,
)
from .encls.eextend import eextend_page
from .epc import EPC_BASE, SCRUB_BATCH, Epc
from .epcm import Epcm
from .faults import GeneralProtection, InvalidOpcode, SgxUsageError
from .leaves import CF_CODES, ENCLS_LEAVES, ENCLU_LEAVES, SGX2_ENCLS, SGX2_ENCLU, load_all
from .lp import LogicalProcessor
from .memory import AddressSpace
from .regs import Reg, RegisterFile, set_result
from .secs import SecsState

if TYPE_CHECKING:
    from .enclave_mode import EntryCheck
    from .tracehook import CpuTracer

MIB = 1 << 20

# Every processor not yet collected: the invariant checker visits them after each test.
live_processors: weakref.WeakSet[Processor] = weakref.WeakSet()

# CPUID.(12H,1):EAX..EDX, the ATTRIBUTES ECREATE may set (INIT is never settable).
SUPPORTED_ATTRIBUTES = int(
    Attribute.DEBUG
    | Attribute.MODE64BIT
    | Attribute.PROVISIONKEY
    | Attribute.EINITTOKEN_KEY
    | Attribute.KSS
    | Attribute.AEXNOTIFY
)
# x87 and SSE only: the native engine cannot execute AVX, so no enclave may enable it [choice].
SUPPORTED_XFRM = 0x3
SUPPORTED_MISCSELECT = int(Miscselect.EXINFO)
MAX_ENCLAVE_SIZE_LOG2_32 = 31
MAX_ENCLAVE_SIZE_LOG2_64 = 56

# The ENCLU front's hot-path constants (enum class attribute lookups are slow).
_RAX = Reg.RAX
_EEXTEND = int(EnclsLeaf.EEXTEND)
_ENTERING = frozenset({EncluLeaf.EENTER, EncluLeaf.ERESUME})


@dataclass(frozen=True)
class ProcessorConfig:
    """What kind of SGX processor to model."""

    epc_size: int = 128 * MIB
    epc_sections: int = 1
    sgx2: bool = True
    flc: bool = True
    cpus: int = 4
    seed: int = 0  # platform root secrets derive from it: same seed, same keys


class Processor:
    """An SGX2 (or SGX1-only) package with `cpus` logical processors."""

    def __init__(self, config: ProcessorConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = ProcessorConfig(**overrides)
        elif overrides:
            raise SgxUsageError("pass either a ProcessorConfig or keyword overrides")
        if config.cpus < 1:
            raise SgxUsageError("a processor needs at least one logical processor")
        load_all()
        self.config = config
        self.sgx2 = config.sgx2
        self.flc = config.flc
        self.epc = Epc(config.epc_size, config.epc_sections, EPC_BASE)
        self.epcm = Epcm()
        self.lps = [LogicalProcessor(i) for i in range(config.cpus)]
        self.feature_control = FEATURE_CONTROL_LOCK | FEATURE_CONTROL_SGX_ENABLE | (
            FEATURE_CONTROL_SGX_LC if config.flc else 0
        )
        self.lepubkeyhash = INTEL_LE_PUBKEYHASH
        self.next_eid = 1  # CR_NEXT_EID
        self.paging_version = 0  # CR_PAGING_VERSION: last version handed out by EWB
        self.boot = 0
        self._derive_platform_secrets(config.seed)
        self.encls_count = [0] * 0x20
        self._encls_table = {
            leaf: fn
            for leaf, fn in ENCLS_LEAVES.items()
            if config.sgx2 or leaf not in SGX2_ENCLS
        }
        self.enclu_count = [0] * 0x10
        # Running measurements of evicted uninitialized SECSs stay in the package, by EID [model].
        self.parked_measurements: dict[int, object] = {}
        # An unmasked event (interrupt, NMI, SMI...) pending while EINIT runs: EINIT returns
        # SGX_UNMASKED_EVENT and the event is then taken, clearing the flag (SDM EINIT).
        self.einit_event_pending = False
        live_processors.add(self)
        # RBX output of the ENCLS being executed (EDBGRD's data); None when the leaf has none.
        self.encls_rbx: int | None = None
        # Optional event recorder (sgxemu.trace): sees every ENCLS, ENCLU and AEX.
        self.tracer: CpuTracer | None = None
        # The last passed EENTER/ERESUME check per (TCS address, resume): enclave_mode.py.
        self.entry_checks: dict[tuple[int, bool], EntryCheck] = {}

    # -- platform secrets ------------------------------------------------------------------
    def _derive_platform_secrets(self, seed: int) -> None:
        def secret(label: str, size: int = 16) -> bytes:
            return hashlib.sha256(f"sgxemu/{seed}/{label}".encode()).digest()[:size]

        self.root_key = secret("root-key")  # fused key every derived key comes from
        self.seal_fuses = secret("seal-fuses")
        self.owner_epoch = secret("owner-epoch")
        self.cpusvn = bytes(16)  # all components 0: every CPUSVN <= it is an all-zero one
        self.report_keyid = secret("report-keyid", 32)
        self.base_pk = secret(f"paging-key/{self.boot}")  # CR_BASE_PK: new at every power cycle

    # -- logical processors ----------------------------------------------------------------
    def lp(self, index: int) -> LogicalProcessor:
        if not 0 <= index < len(self.lps):
            raise SgxUsageError(f"no logical processor {index} (the processor has {len(self.lps)})")
        return self.lps[index]

    # -- convenience lookups ----------------------------------------------------------------
    def secs_of(self, index: int) -> SecsState | None:
        """The hidden state of the SECS at an EPC index, if that page is a valid SECS."""
        entry = self.epcm.get(index)
        if entry is None or entry.secs is None or entry.secs.index != index:
            return None
        return entry.secs

    def enclaves(self) -> list[SecsState]:
        return [e.secs for i, e in self.epcm.items() if e.secs is not None and e.secs.index == i]

    def allocate_eid(self) -> int:
        eid = self.next_eid
        self.next_eid += 1
        return eid

    def new_paging_version(self) -> int:
        self.paging_version += 1
        return self.paging_version

    # -- ENCLS -----------------------------------------------------------------------------
    def encls(
        self, leaf: int, rbx: int = 0, rcx: int = 0, rdx: int = 0, *, mem: AddressSpace
    ) -> int:
        """Execute ENCLS at CPL 0; returns RAX. Raises the modelled fault on failure."""
        if not self.feature_control & FEATURE_CONTROL_SGX_ENABLE:
            raise GeneralProtection()
        fn = self._encls_table.get(leaf & 0xFFFF_FFFF)
        if fn is None:
            raise GeneralProtection()  # no such leaf (SGX2 leaves on an SGX1 part included)
        self.encls_count[leaf & 0x1F] += 1
        if self.tracer is not None:
            return self.tracer.encls(self, leaf, rbx, rcx, rdx, mem, fn)
        return fn(self, mem, rbx, rcx, rdx)

    def encls_eextend_page(self, secs: int, page: int, *, mem: AddressSpace) -> None:
        """ENCLS[EEXTEND] for each 256-byte chunk of a page in ascending order, as the kernel's
        sgx_encl_extend issues them: the same counters, result and first fault as 16 `encls`."""
        fn = self._encls_table.get(_EEXTEND)
        if (
            fn is None
            or self.tracer is not None
            or page & 0xFFF
            or not self.feature_control & FEATURE_CONTROL_SGX_ENABLE
        ):
            for off in range(0, PAGE_SIZE, 256):  # one leaf at a time, as an observer sees them
                self.encls(_EEXTEND, secs, page + off, mem=mem)
            return
        self.encls_count[_EEXTEND] += 1  # the first EEXTEND runs, and may fault
        eextend_page(self, mem, secs, page)
        self.encls_count[_EEXTEND] += PAGE_SIZE // 256 - 1

    def encls_regs(self, regs: RegisterFile, mem: AddressSpace) -> None:
        """ENCLS from a register file: RAX = leaf; sets RAX and RFLAGS as the SDM says."""
        leaf = regs[Reg.RAX] & 0xFFFF_FFFF
        code = self.encls(leaf, regs[Reg.RBX], regs[Reg.RCX], regs[Reg.RDX], mem=mem)
        if self.encls_rbx is not None:
            regs[Reg.RBX] = self.encls_rbx
        set_result(regs, code, code in CF_CODES.get(leaf, ()))

    # -- ENCLU -----------------------------------------------------------------------------
    def enclu(self, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace) -> None:
        """Execute ENCLU at CPL 3 with RIP at the instruction; registers updated in place."""
        if not self.feature_control & FEATURE_CONTROL_SGX_ENABLE:
            raise InvalidOpcode()
        leaf = regs[_RAX] & 0xFFFF_FFFF
        fn = ENCLU_LEAVES.get(leaf)
        if fn is None or (not self.sgx2 and leaf in SGX2_ENCLU):
            raise GeneralProtection()
        entering = leaf in _ENTERING
        if entering == lp.enclave_mode:
            raise GeneralProtection()  # EENTER/ERESUME inside, or an in-enclave leaf outside
        self.enclu_count[leaf] += 1
        if self.tracer is not None:
            self.tracer.enclu(self, lp, regs, mem, fn)
            return
        fn(self, lp, regs, mem)

    # -- CPUID and MSRs ----------------------------------------------------------------------
    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """The SGX-related CPUID leaves (7 and 12H); other leaves read as zero here."""
        if leaf == 0x7 and subleaf == 0:
            ebx = 1 << 2  # SGX
            ecx = (1 << 30) if self.flc else 0  # SGX_LC
            return 0, ebx, ecx, 0
        if leaf != 0x12:
            return 0, 0, 0, 0
        if subleaf == 0:
            eax = 1 | (2 if self.sgx2 else 0)
            edx = MAX_ENCLAVE_SIZE_LOG2_32 | (MAX_ENCLAVE_SIZE_LOG2_64 << 8)
            return eax, SUPPORTED_MISCSELECT, 0, edx
        if subleaf == 1:
            attrs = SUPPORTED_ATTRIBUTES
            return attrs & 0xFFFF_FFFF, attrs >> 32, SUPPORTED_XFRM & 0xFFFF_FFFF, SUPPORTED_XFRM >> 32
        n = subleaf - 2
        if 0 <= n < len(self.epc.sections):
            sec = self.epc.sections[n]
            return (
                CPUID_EPC_SECTION_VALID | (sec.base & 0xFFFF_F000),
                (sec.base >> 32) & 0xF_FFFF,
                CPUID_EPC_SECTION_VALID | (sec.size & 0xFFFF_F000),
                (sec.size >> 32) & 0xF_FFFF,
            )
        return 0, 0, 0, 0

    def rdmsr(self, msr: int) -> int:
        if msr == IA32_FEATURE_CONTROL:
            return self.feature_control
        if IA32_SGXLEPUBKEYHASH0 <= msr <= IA32_SGXLEPUBKEYHASH3:
            i = (msr - IA32_SGXLEPUBKEYHASH0) * 8
            return int.from_bytes(self.lepubkeyhash[i : i + 8], "little")
        raise GeneralProtection()

    def wrmsr(self, msr: int, value: int) -> None:
        """LEPUBKEYHASH is writable only with FLC enabled and locked (SDM16 42.2.2)."""
        if IA32_SGXLEPUBKEYHASH0 <= msr <= IA32_SGXLEPUBKEYHASH3:
            fc = self.feature_control
            if not (fc & FEATURE_CONTROL_LOCK and fc & FEATURE_CONTROL_SGX_LC):
                raise GeneralProtection()
            i = (msr - IA32_SGXLEPUBKEYHASH0) * 8
            h = bytearray(self.lepubkeyhash)
            h[i : i + 8] = (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
            self.lepubkeyhash = bytes(h)
            return
        raise GeneralProtection()

    def power_cycle(self) -> None:
        """S3-S5: the EPC and every enclave are lost and the paging key changes (SDM16 42.14)."""
        for lp in self.lps:
            lp.__init__(lp.index)  # type: ignore[misc]
        for index in list(self.epcm):
            self.epc.release(index)
        self.epcm.clear()
        self.epc.scrub()
        self.parked_measurements.clear()
        self.boot += 1
        self._derive_platform_secrets(self.config.seed)

    def free_epc_page(self, index: int) -> None:
        """VALID := 0 for a page; its contents are scrubbed (an emulator may, spec 11)."""
        del self.epcm[index]
        epc = self.epc
        epc.release(index)
        if len(epc.dirty) >= SCRUB_BATCH:
            epc.scrub(self.epcm)

    @property
    def free_pages(self) -> int:
        return self.epc.npages - len(self.epcm)

    def close(self) -> None:
        live_processors.discard(self)
        self.epc.close()


__all__ = ["Processor", "ProcessorConfig", "PAGE_SIZE", "EnclsLeaf", "EncluLeaf", "set_result"]
