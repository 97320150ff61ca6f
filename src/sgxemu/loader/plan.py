"""What an enclave file asks the loader to do: ECREATE, then pages to EADD (and EEXTEND).

An `EnclavePlan` is the common output of the SDK and SGXS parsers. Measuring it replays the
ECREATE/EADD/EEXTEND records through `sgxemu.hw.measurement` (the definition the emulated
processor uses); loading it goes through the Linux ABI (`linux_load`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from sgxemu.arch.constants import EEXTEND_CHUNK, PAGE_SIZE, SIGSTRUCT_SIZE
from sgxemu.arch.structs import Sigstruct
from sgxemu.hw.launch import mrsigner, sigstruct_format_valid, sigstruct_signature_padding
from sgxemu.hw.measurement import MeasurementState

__all__ = [
    "ALL_CHUNKS",
    "ZERO_PAGE",
    "EnclavePlan",
    "Measurement",
    "PageAdd",
    "PageRun",
    "SigstructReport",
    "check_sigstruct",
    "measure_plan",
]

CHUNKS_PER_PAGE: Final = PAGE_SIZE // EEXTEND_CHUNK  # 16
ALL_CHUNKS: Final = tuple(range(CHUNKS_PER_PAGE))
NO_CHUNKS: Final[tuple[int, ...]] = ()
ZERO_PAGE: Final = bytes(PAGE_SIZE)


@dataclass(frozen=True, slots=True)
class PageAdd:
    """One EADD at `offset` (from the enclave base), then EEXTENDs of `chunks` in that order.

    `data` is the full 4096-byte page as it lands in the EPC.
    """

    offset: int
    secinfo_flags: int
    data: bytes = field(repr=False)
    chunks: tuple[int, ...] = ALL_CHUNKS

    @property
    def measured(self) -> bool:
        return bool(self.chunks)

    @property
    def fully_measured(self) -> bool:
        """What SGX_PAGE_MEASURE produces: all 16 chunks in ascending order."""
        return self.chunks == ALL_CHUNKS


@dataclass(frozen=True, slots=True)
class PageRun:
    """`count` consecutive pages from `offset`, all with the same SECINFO, contents and chunks
    (the SDK adds heaps, stacks and .bss this way; keeping them as runs bounds memory)."""

    offset: int
    count: int
    secinfo_flags: int
    data: bytes = field(repr=False)
    chunks: tuple[int, ...] = ALL_CHUNKS

    def pages(self) -> Iterator[PageAdd]:
        for k in range(self.count):
            yield PageAdd(self.offset + k * PAGE_SIZE, self.secinfo_flags, self.data, self.chunks)


@dataclass
class EnclavePlan:
    """ECREATE parameters and the page records, in measurement order."""

    size: int
    ssaframesize: int
    runs: list[PageRun]
    kind: str  # "sdk" or "sgxs"
    sigstruct: bytes | None = None  # the embedded one (SDK) or None

    @property
    def pages(self) -> Iterator[PageAdd]:
        """Every page in order (generated: a run of a million heap pages stays one object)."""
        for run in self.runs:
            yield from run.pages()

    @property
    def eadd_count(self) -> int:
        return sum(r.count for r in self.runs)

    @property
    def eextend_count(self) -> int:
        return sum(r.count * len(r.chunks) for r in self.runs)


@dataclass(frozen=True)
class Measurement:
    mrenclave: bytes
    eadd: int
    eextend: int
    update_counter: int  # 64-byte blocks hashed (SECS update counter)


def measure_plan(plan: EnclavePlan) -> Measurement:
    """MRENCLAVE of ECREATE + the plan's records (SDM ECREATE/EADD/EEXTEND, spec §9.1)."""
    state = MeasurementState()
    state.ecreate(plan.ssaframesize, plan.size)
    for run in plan.runs:
        view = memoryview(run.data)
        chunks = [(c * EEXTEND_CHUNK, view[c * EEXTEND_CHUNK : (c + 1) * EEXTEND_CHUNK]) for c in run.chunks]
        for k in range(run.count):
            offset = run.offset + k * PAGE_SIZE
            state.eadd(offset, run.secinfo_flags)
            for off, chunk in chunks:
                state.eextend(offset + off, chunk)
    return Measurement(state.final(), plan.eadd_count, plan.eextend_count, state.update_counter)


@dataclass(frozen=True)
class SigstructReport:
    """A SIGSTRUCT and the checks EINIT makes on it that do not need the SECS."""

    raw: bytes = field(repr=False)
    fields: Sigstruct = field(repr=False)
    format_ok: bool  # SDM EINIT: header, vendor, exponent, reserved fields
    signature_ok: bool  # RSA-3072 with Q1/Q2 as EINIT checks it
    mrsigner: bytes
    measurement_ok: bool | None  # ENCLAVEHASH == computed MRENCLAVE (None: not measured)

    @property
    def enclavehash(self) -> bytes:
        return self.fields.enclavehash

    @property
    def ok(self) -> bool:
        return self.format_ok and self.signature_ok and self.measurement_ok is not False

    def problems(self) -> list[str]:
        """One phrase per failed check, for error messages."""
        out = []
        if not self.format_ok:
            out.append("SIGSTRUCT format invalid (header, vendor, exponent or reserved fields)")
        if not self.signature_ok:
            out.append("SIGSTRUCT signature invalid")
        if self.measurement_ok is False:
            out.append("measurement mismatch: MRENCLAVE differs from SIGSTRUCT ENCLAVEHASH")
        return out


def check_sigstruct(raw: bytes, mrenclave: bytes | None = None) -> SigstructReport:
    """Parse and verify a 1808-byte SIGSTRUCT (hw.launch checks; SDM EINIT)."""
    if len(raw) != SIGSTRUCT_SIZE:
        raise ValueError(f"SIGSTRUCT must be {SIGSTRUCT_SIZE} bytes, got {len(raw)}")
    st = Sigstruct.unpack(raw)
    fmt = sigstruct_format_valid(raw)
    sig = fmt and sigstruct_signature_padding(raw) is not None
    return SigstructReport(
        raw=bytes(raw),
        fields=st,
        format_ok=fmt,
        signature_ok=sig,
        mrsigner=mrsigner(st.modulus),
        measurement_ok=None if mrenclave is None else st.enclavehash == mrenclave,
    )
