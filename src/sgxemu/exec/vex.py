"""Finding code the native engine must not let Unicorn execute: VEX/EVEX and enclave-illegal forms.

Unicorn 2.1 (QEMU 5.0 TCG) decodes VEX prefixes but ignores VEX.vvvv in most SSE-derived
instructions, so `vpxor xmm0, xmm1, xmm2` silently computes `xmm0 ^ xmm2`
(unicorn-engine-notes.md §5). The only VEX instructions it computes correctly are the BMI1/BMI2
general-purpose ones, which are allowed. EVEX (62h) and XOP (8Fh map 8-10) raise #UD in Unicorn
already; they are flagged anyway.

Instructions SGX makes illegal in enclave mode (#UD, SDM 39.6.1 / Intel's "Illegal Instructions
within an Enclave") that Unicorn would run at CPL 3 are flagged too: SGDT, SIDT, SLDT, STR,
CPUID, GETSEC, RDPMC, VMCALL, VMFUNC, IN/INS/OUT/OUTS, far CALL/JMP/RET, INT n, INTO, IRET,
LDS/LES/LFS/LGS/LSS, MOV to a segment register, POP of a segment register, SYSCALL, SYSENTER,
and RDTSC/RDTSCP on an SGX1-only processor.

What is covered, exactly: a page is scanned when a fetch TLB fill for it happens (once per page
content, see `CodeScanCache`). The scan is a linear sweep with capstone that starts 64 bytes
before the page (so it is in step with the instruction stream when it reaches the page) and a
second sweep from the instruction the processor is about to execute when it lies in the page.
Every flagged instruction start gets a one-address Unicorn code hook that raises #UD before the
instruction executes. A flagged instruction that can only be reached by jumping into the middle
of another instruction of the sweep (overlapping-instruction tricks) is not found; for SYSCALL,
SYSENTER, CPUID, IN and OUT Unicorn's instruction hooks catch such a case at run time as well.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from capstone import CS_ARCH_X86, CS_MODE_64, Cs

# Legacy prefixes and REX: skipped to find the opcode byte.
_PREFIXES = frozenset(
    {0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67, *range(0x40, 0x50)}
)
# VEX-encoded general-purpose instructions Unicorn executes correctly (BMI1, BMI2).
BMI_MNEMONICS = frozenset(
    {"andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep", "pext", "rorx", "sarx",
     "shlx", "shrx"}
)  # fmt: skip
# Enclave-illegal instructions (#UD in enclave mode), by capstone mnemonic.
_ILLEGAL_MNEMONICS = frozenset(
    {"sgdt", "sidt", "sldt", "str", "cpuid", "getsec", "rdpmc", "vmcall", "vmfunc", "in", "insb",
     "insw", "insd", "out", "outsb", "outsw", "outsd", "retf", "retfq", "int", "into", "iret",
     "iretd", "iretq", "lds", "les", "lfs", "lgs", "lss", "syscall", "sysenter", "ljmp", "lcall"}
)  # fmt: skip
_SEGMENT_REGS = ("ds", "es", "ss", "fs", "gs", "cs")
SWEEP_LEAD = 64  # bytes decoded before the page to get in step with the instruction stream
MAX_INSN = 15


def opcode_offset(code: bytes) -> int:
    """Index of the first byte after legacy and REX prefixes."""
    i = 0
    while i < len(code) and i < MAX_INSN and code[i] in _PREFIXES:
        i += 1
    return i


def classify(code: bytes, mnemonic: str, op_str: str, *, sgx2: bool = True) -> str | None:
    """Why the instruction `code` must not run natively in an enclave, or None."""
    i = opcode_offset(code)
    if i >= len(code):
        return None
    op = code[i]
    if op in (0xC4, 0xC5):
        # VEX.L=1 is #UD for BMI too (and Unicorn does not check it).
        vex_l = (
            (code[i + 2] >> 2) & 1
            if op == 0xC4 and i + 2 < len(code)
            else ((code[i + 1] >> 2) & 1 if i + 1 < len(code) else 1)
        )
        if mnemonic in BMI_MNEMONICS and not vex_l:
            return None
        return "vex"
    if op == 0x62:
        return "evex"
    if op == 0x8F and i + 1 < len(code) and (code[i + 1] & 0x1F) >= 8:
        return "xop"
    words = mnemonic.split()
    base = words[-1] if words else ""
    if base in _ILLEGAL_MNEMONICS:
        return "illegal"
    if op == 0xFF and i + 1 < len(code) and (code[i + 1] >> 3) & 7 in (3, 5):
        return "illegal"  # far CALL / far JMP through memory
    if base == "mov" and op == 0x8E:
        return "illegal"  # MOV to a segment register
    if base == "pop" and op_str in _SEGMENT_REGS:
        return "illegal"
    if not sgx2 and base in ("rdtsc", "rdtscp"):
        return "illegal"  # SGX1: RDTSC/RDTSCP are #UD inside an enclave (SDM 39.6.1)
    return None


class Sweeper:
    """Linear-sweep disassembly of code windows (one capstone handle, reused)."""

    def __init__(self, *, sgx2: bool = True) -> None:
        self._md = Cs(CS_ARCH_X86, CS_MODE_64)
        self._md.detail = False
        self._md.skipdata = False
        self.sgx2 = sgx2

    def sweep(self, code: bytes, addr: int, start: int = 0) -> Iterator[tuple[int, int, str]]:
        """(address, size, reason or "") of each instruction decoded from `code[start:]`.

        Undecodable bytes are stepped over one at a time, as a processor would #UD on them.
        """
        md = self._md
        pos = start
        n = len(code)
        while pos < n:
            end = pos
            for a, size, mnemonic, op_str in md.disasm_lite(code[pos:], addr + pos):
                off = a - addr
                reason = classify(code[off : off + size], mnemonic, op_str, sgx2=self.sgx2)
                yield a, size, reason or ""
                end = off + size
            # capstone stops at an undecodable byte: step over it.
            pos = end if end > pos else pos + 1

    def scan(
        self, code: bytes, code_addr: int, lo: int, hi: int, roots: Iterable[int] = ()
    ) -> tuple[set[int], set[int]]:
        """Flagged instruction starts in [lo, hi) and all instruction starts seen there.

        `code` starts at linear address `code_addr`; the sweep starts at its first byte and at
        each root address (a known instruction boundary).
        """
        flagged: set[int] = set()
        starts: set[int] = set()
        for a, _size, reason in self.sweep(code, code_addr):
            if lo <= a < hi:
                starts.add(a)
                if reason:
                    flagged.add(a)
        for root in roots:
            if root in starts or not lo <= root < hi:
                continue
            for a, _size, reason in self.sweep(code, code_addr, root - code_addr):
                if a in starts:
                    break  # back in step with the first sweep
                if lo <= a < hi:
                    starts.add(a)
                    if reason:
                        flagged.add(a)
        return flagged, starts
