"""Run the ported selftests: each in a fresh machine (kselftest forks a child per test; here
every test also gets a freshly booted machine, so none sees another's leftovers)."""

from __future__ import annotations

import fnmatch
import functools
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..linux.errors import Signal
from ..linux.load import sign
from ..loader.selftest_layout import EnclaveImage, load_segments
from .harness import AssertionAbort, Case, Outcome, Skip, TestResult
from .scenarios import ENCL_HEAP_SIZE_DEFAULT, SCENARIOS

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ..linux.machine import Machine

ENGINES = ("native", "scripted")
DEFAULT_EPC = 8 << 20


@dataclass(frozen=True)
class SelftestConfig:
    """The machine the tests run on."""

    epc_size: int = DEFAULT_EPC
    sgx2: bool = True
    engine: str = "native"  # "native": the compiled test enclave on Unicorn; "scripted"
    kernel: str | None = None  # a design variant of the driver; None: the machine's default

    def to_json(self) -> dict[str, Any]:
        return {
            "epc_size": self.epc_size,
            "sgx2": self.sgx2,
            "engine": self.engine,
            "kernel": self.kernel or "merged",
        }


def select(pattern: str | None) -> list[str]:
    """Test names matching `pattern`: a glob if it has *?[, else a substring; all if None."""
    names = list(SCENARIOS)
    if not pattern:
        return names
    if any(c in pattern for c in "*?["):
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return [n for n in names if pattern in n]


@functools.cache
def session_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-3072 e=3 test key, one per process (generating one is slow)."""
    from ..sign import generate_key

    return generate_key()


class SelftestSuite:
    """The test enclave (test_encl.elf), a signing key, and images and SIGSTRUCTs by heap size."""

    def __init__(self, elf: Path | None = None, key: rsa.RSAPrivateKey | None = None) -> None:
        if elf is None:
            from ..testenclave import build_test_enclave

            elf = build_test_enclave()
        self.elf = Path(elf)
        self._key = key
        self._images: dict[int, EnclaveImage] = {}
        self._sigstructs: dict[int, bytes] = {}

    @property
    def key(self) -> rsa.RSAPrivateKey:
        if self._key is None:
            self._key = session_key()
        return self._key

    def image(self, heap_size: int) -> EnclaveImage:
        """encl_load(\"test_encl.elf\", encl, heap_size)."""
        if heap_size not in self._images:
            self._images[heap_size] = load_segments(self.elf, heap_size=heap_size)
        return self._images[heap_size]

    def sigstruct(self, image: EnclaveImage) -> bytes:
        """encl_measure: sigstruct.c's SIGSTRUCT for the image."""
        heap = image.heap.size
        if heap not in self._sigstructs:
            self._sigstructs[heap] = sign(image, self.key)
        return self._sigstructs[heap]

    def machine_kwargs(self, config: SelftestConfig) -> dict[str, Any]:
        if config.engine not in ENGINES:
            raise ValueError(f"unknown engine {config.engine!r}: use one of {', '.join(ENGINES)}")
        kw: dict[str, Any] = {"epc_size": config.epc_size, "sgx2": config.sgx2}
        if config.engine == "native":
            kw["engine"] = "native"
        else:
            from ..exec.scripted import ScriptedEngine
            from ..exec.scripted_selftest import selftest_program

            program = selftest_program(self.image(ENCL_HEAP_SIZE_DEFAULT))  # heap-independent
            kw["engine"] = lambda cpu, lp, mem: ScriptedEngine(cpu, lp, mem, program)
        if config.kernel is not None:
            kw["kernel"] = config.kernel
        return kw

    def run(
        self,
        name: str,
        config: SelftestConfig,
        make_machine: Callable[..., Machine] | None = None,
    ) -> TestResult:
        """Run one test on a fresh machine from `make_machine` (default: `Machine`, closed
        afterwards; a caller's factory owns its machines)."""
        scenario = SCENARIOS[name]
        start = time.perf_counter()
        if make_machine is None:
            from ..linux.machine import Machine

            machine = Machine(**self.machine_kwargs(config))
        else:
            machine = make_machine(**self.machine_kwargs(config))
        result = TestResult(name, Outcome.PASS)
        skip: str | None = None
        try:
            case = Case(machine, self.image, self.sigstruct)
            try:
                scenario(case)
            except Skip as s:
                skip = s.reason
            except AssertionAbort:
                pass
            except Signal as sig:  # the C test would die of it
                case.failures.append(f"died by {type(sig).__name__} (address {sig.addr:#x})")
                result.traceback = traceback.format_exc()
            except Exception as exc:  # the emulator failed
                case.failures.append(f"emulator error: {type(exc).__name__}: {exc}")
                result.traceback = traceback.format_exc()
            try:
                case.teardown()
            except Exception as exc:
                case.failures.append(f"teardown: {type(exc).__name__}: {exc}")
                result.traceback = result.traceback or traceback.format_exc()
            result.failures = case.failures
            result.log = case.log
        finally:
            if make_machine is None:
                try:
                    machine.close()
                except Exception as exc:
                    result.failures.append(f"machine close: {type(exc).__name__}: {exc}")
        # A failed expectation stands even if the test skips afterwards.
        if result.failures:
            result.outcome, result.reason = Outcome.FAIL, result.failures[0]
        elif skip is not None:
            result.outcome, result.reason = Outcome.SKIP, skip
        result.seconds = time.perf_counter() - start
        return result

    def run_all(
        self,
        config: SelftestConfig,
        names: Iterable[str] | None = None,
        on_start: Callable[[str], None] | None = None,
        on_done: Callable[[TestResult], None] | None = None,
    ) -> list[TestResult]:
        results = []
        for name in names if names is not None else SCENARIOS:
            if on_start is not None:
                on_start(name)
            result = self.run(name, config)
            results.append(result)
            if on_done is not None:
                on_done(result)
        return results
