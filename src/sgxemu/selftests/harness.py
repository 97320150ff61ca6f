"""What the kselftest harness gives each SGX test: FIXTURE(enclave), EXPECT/ASSERT, SKIP.

A `Case` is one test's `self` (the enclave and the `sgx_enclave_run` struct) plus its
`_metadata`: EXPECT_* failures are recorded and the test goes on, ASSERT_* failures end it,
SKIP ends it as skipped. System calls return what libc returns (-1 and `errno` on failure), so
each scenario reads like the C test it ports.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NoReturn

from .. import uapi
from ..linux.load import LoadedEnclave, encl_build
from ..linux.mman import MAP_FAILED, MAP_FIXED, MAP_SHARED, PROT_READ, PROT_WRITE
from ..linux.process import Process
from ..loader.selftest_layout import EnclaveFormatError, EnclaveImage, Segment

if TYPE_CHECKING:
    from ..linux.machine import Machine

PAGE_SIZE = 4096
EENTER, EEXIT, ERESUME = uapi.EENTER, uapi.EEXIT, uapi.ERESUME


class Outcome(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass
class TestResult:
    """How one test ended, as the harness reports it."""

    name: str
    outcome: Outcome
    reason: str = ""  # the SKIP reason, or the first failure
    failures: list[str] = field(default_factory=list)  # every failed EXPECT/ASSERT, in order
    log: list[str] = field(default_factory=list)  # TH_LOG lines
    seconds: float = 0.0
    traceback: str = ""  # when the test died of an exception

    __test__ = False  # not a pytest class

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "result": self.outcome.value,
            "reason": self.reason,
            "failures": self.failures,
            "log": self.log,
            "seconds": round(self.seconds, 4),
        }


class Skip(Exception):  # noqa: N818  (SKIP(return, ...))
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AssertionAbort(Exception):  # noqa: N818  (an ASSERT_* failed: the test returns)
    pass


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value) if -10 < value < 10 else f"{value:#x}"
    return repr(value)


class Case:
    """FIXTURE(enclave) of tools/testing/selftests/sgx/main.c, with the test's _metadata."""

    def __init__(
        self,
        machine: Machine,
        load_image: Callable[[int], EnclaveImage],
        sign_image: Callable[[EnclaveImage], bytes],
    ) -> None:
        self.machine = machine
        self.proc: Process = machine.spawn()  # the forked child each TEST_F runs in
        self._load_image = load_image
        self._sign_image = sign_image
        self.encl: LoadedEnclave | None = None
        self.image: EnclaveImage | None = None
        self.run = uapi.sgx_enclave_run()
        self.errno = 0
        self.failures: list[str] = []
        self.log: list[str] = []
        self._stack = self.proc.alloc(4 * PAGE_SIZE)  # the test's stack: op structs live here
        self._stack_next = self._stack
        self._op_addr: dict[int, tuple[int, Any]] = {}

    # -- the enclave (setup_test_encl, encl_delete) ---------------------------------------------
    @property
    def encl_base(self) -> int:
        assert self.encl is not None
        return self.encl.base

    @property
    def encl_size(self) -> int:
        assert self.encl is not None
        return self.encl.size

    @property
    def fd(self) -> int:
        return self.encl.fd if self.encl is not None else -1

    @property
    def segments(self) -> list[Segment]:
        assert self.image is not None
        return list(self.image.segments)

    def setup_test_encl(self, heap_size: int) -> bool:
        """encl_load + encl_measure + encl_build, then mmap every segment."""
        try:
            image = self._load_image(heap_size)
        except (OSError, EnclaveFormatError) as exc:
            self.th_log(f"Failed to load the test enclave: {exc}")
            return False
        self.image = image
        try:
            self.encl = encl_build(self.proc, image, sigstruct=self._sign_image(image), map_segments=False)
        except OSError as exc:
            self.th_log(f"Failed to build the test enclave: {os.strerror(exc.errno or 0)}")
            self.th_log("Failed to initialize the test enclave.")
            return False
        for seg in image.segments:  # "An enclave consumer only must do this."
            addr = self.mmap(self.encl.base + seg.offset, seg.size, seg.prot, MAP_SHARED | MAP_FIXED, self.encl.fd, 0)
            self.expect_ne(addr, MAP_FAILED, "mmap(segment)")
            if addr == MAP_FAILED:
                for s in image.segments:
                    self.th_log(f"{s.offset:#018x} {s.size:#018x} {s.prot:#04x}")
                self.th_log("Failed to initialize the test enclave.")
                return False
        self.encl.mapped = True
        return True

    def teardown(self) -> None:
        """FIXTURE_TEARDOWN: encl_delete; then the test's process exits."""
        try:
            if self.encl is not None:
                self.encl.delete()
        finally:
            self.proc.exit()

    def encl_get_tcs_offset(self) -> int:
        segs = self.segments
        return segs[0].offset if segs and segs[0].prot == PROT_READ | PROT_WRITE else -1

    def encl_get_data_offset(self) -> int:
        for seg in self.segments[1:]:
            if seg.prot == PROT_READ | PROT_WRITE:
                return int(seg.offset)
        return -1

    def encl_get_entry(self, symbol: str) -> int:
        assert self.image is not None
        try:
            return self.image.symbol(symbol)
        except KeyError:
            return 0

    # -- libc ---------------------------------------------------------------------------------------
    def _libc(self, fn: Callable[[], int]) -> int:
        try:
            return fn()
        except OSError as exc:
            self.errno = exc.errno or _errno.EIO
            return -1

    def ioctl(self, request: int, arg: Any) -> int:
        return self._libc(lambda: self.proc.ioctl(self.fd, request, arg))

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
        return self._libc(lambda: self.proc.mmap(addr, length, prot, flags, fd, offset))

    def munmap(self, addr: int, length: int) -> int:
        def call() -> int:
            self.proc.munmap(addr, length)
            return 0

        return self._libc(call)

    def mprotect(self, addr: int, length: int, prot: int) -> int:
        def call() -> int:
            self.proc.mprotect(addr, length, prot)
            return 0

        return self._libc(call)

    def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        return self.proc.cpuid(leaf, subleaf)

    # -- entering the enclave -----------------------------------------------------------------------
    def _addr_of(self, op: ctypes.Structure) -> int:
        """Each op struct is a local of the test: it keeps one address on the stack."""
        known = self._op_addr.get(id(op))
        if known is not None and known[1] is op:
            return known[0]
        addr = self._stack_next
        self._stack_next += (ctypes.sizeof(op) + 15) & ~15
        self._op_addr[id(op)] = (addr, op)
        return addr

    def vdso_sgx_enter_enclave(self, op: ctypes.Structure, leaf: int) -> int:
        """vdso_sgx_enter_enclave((unsigned long)&op, 0, 0, leaf, 0, 0, &self->run)."""
        addr = self._addr_of(op)
        size = ctypes.sizeof(op)
        self.proc.write(addr, bytes(op))
        try:
            return self.proc.vdso_sgx_enter_enclave(addr, 0, 0, leaf, 0, 0, self.run)
        finally:
            ctypes.memmove(ctypes.addressof(op), self.proc.read(addr, size), size)

    def encl_call(self, op: ctypes.Structure, clobbered: bool) -> int:
        """ENCL_CALL: the test's own sgx_enter_enclave (call.S) or the vDSO; both end in the
        vDSO's ENCLU here, call.S only keeping the callee-saved registers."""
        del clobbered
        return self.vdso_sgx_enter_enclave(op, EENTER)

    # -- the harness --------------------------------------------------------------------------------
    def th_log(self, line: str) -> None:
        self.log.append(line)

    def _check(self, ok: bool, message: str, fatal: bool) -> bool:
        if not ok:
            self.failures.append(message)
            if fatal:
                raise AssertionAbort(message)
        return ok

    def expect_eq(self, actual: object, expected: object, what: str, fatal: bool = False) -> bool:
        return self._check(actual == expected, f"{what}: expected {_fmt(expected)}, got {_fmt(actual)}", fatal)

    def expect_ne(self, actual: object, other: object, what: str, fatal: bool = False) -> bool:
        return self._check(actual != other, f"{what}: expected anything but {_fmt(other)}", fatal)

    def expect_lt(self, a: int, b: int, what: str) -> bool:
        return self._check(a < b, f"{what}: expected {_fmt(a)} < {_fmt(b)}", False)

    def assert_eq(self, actual: object, expected: object, what: str) -> None:
        self.expect_eq(actual, expected, what, fatal=True)

    def assert_ne(self, actual: object, other: object, what: str) -> None:
        self.expect_ne(actual, other, what, fatal=True)

    def assert_true(self, value: bool, what: str) -> None:
        self._check(bool(value), f"{what}: expected true", True)

    def expect_eexit(self) -> None:
        """EXPECT_EEXIT(&self->run), with its TH_LOG of the exception fields."""
        r = self.run
        if not self.expect_eq(r.function, EEXIT, "run.function"):
            self.th_log(f"{r.exception_vector:#04x} {r.exception_error_code:#04x} {r.exception_addr:#018x}")
            self.failures[-1] += (
                f" (exception vector {r.exception_vector}, error code {r.exception_error_code:#x},"
                f" address {r.exception_addr:#x})"
            )

    def expect_no_exception(self) -> None:
        """The three EXPECT_EQ(self->run.exception_*, 0) that follow most calls."""
        self.expect_eq(self.run.exception_vector, 0, "run.exception_vector")
        self.expect_eq(self.run.exception_error_code, 0, "run.exception_error_code")
        self.expect_eq(self.run.exception_addr, 0, "run.exception_addr")

    def clear_exception(self) -> None:
        self.run.exception_vector = 0
        self.run.exception_error_code = 0
        self.run.exception_addr = 0

    def reset_run(self) -> None:
        """memset(&self->run, 0, sizeof(self->run)); self->run.tcs = self->encl.encl_base;"""
        ctypes.memset(ctypes.addressof(self.run), 0, ctypes.sizeof(self.run))
        self.run.tcs = self.encl_base

    def skip(self, reason: str) -> NoReturn:
        raise Skip(reason)
