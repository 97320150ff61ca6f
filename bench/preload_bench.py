"""Preload-library benchmarks: a C host program (tests/preload/host.c) under LD_PRELOAD.

* `preload_enter_exit_us`: one __vdso_sgx_enter_enclave(EENTER) -> ENCL_OP_NOP -> EEXIT round
  trip made by the host program (C -> trampoline -> embedded Python -> Unicorn -> back), the
  median of three runs of N calls each.
* `preload_startup_ms`: wall time of a host program that opens /dev/sgx_enclave and exits
  (process start, CPython start, sgxemu's import, the machine, the CPUID set-up), the median of
  five runs after a warm-up run (which fills the CPUID-site cache).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST_C = ROOT / "tests" / "preload" / "host.c"
_STATE: dict[str, Any] = {}


def _median(samples: list[float]) -> float:
    s = sorted(samples)
    return s[len(s) // 2]


def _setup() -> dict[str, Any]:
    if _STATE:
        return _STATE
    from sgxemu.linux.load import sign
    from sgxemu.loader.selftest_layout import load_segments
    from sgxemu.preload import build_preload
    from sgxemu.sign import generate_key
    from sgxemu.testenclave import build_test_enclave

    cc = shutil.which("gcc")
    if cc is None:
        raise RuntimeError("gcc is needed to build the benchmark's host program")
    work = Path(tempfile.mkdtemp(prefix="sgxemu-preload-bench-"))
    elf = build_test_enclave()
    (work / "sig.bin").write_bytes(sign(load_segments(elf), generate_key()))
    host = work / "host"
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-pthread", "-o", str(host), str(HOST_C)], check=True)
    env = dict(os.environ)
    env.update(
        {"LD_PRELOAD": str(build_preload()), "SGXEMU_PYTHON": sys.executable, "SGXEMU_EPC": "8M"}
    )
    _STATE.update(host=host, elf=elf, sig=work / "sig.bin", env=env)
    return _STATE


def _run(*args: str) -> str:
    st = _setup()
    proc = subprocess.run([str(st["host"]), *args], env=st["env"], capture_output=True, text=True,
                          timeout=600, check=True)  # fmt: skip
    return proc.stdout


def enter_exit_us(quick: bool) -> float:
    st = _setup()
    n = 1000 if quick else 4000
    samples = []
    for _ in range(3):
        out = _run(str(st["elf"]), str(st["sig"]), "--bench", str(n))
        m = re.search(r"bench ns_per_call=(\d+) function=4 ", out)
        assert m is not None, out
        samples.append(int(m.group(1)) / 1000)
    return _median(samples)


def startup_ms(quick: bool) -> float:
    _run("--open")  # warm-up: page cache, CPUID-site cache
    samples = []
    for _ in range(3 if quick else 5):
        t = time.perf_counter()
        out = _run("--open")
        samples.append((time.perf_counter() - t) * 1000)
        assert out.strip() == "open ok", out
    return _median(samples)


BENCHMARKS = {
    "preload_enter_exit_us": enter_exit_us,
    "preload_startup_ms": startup_ms,
}

TARGETS = {
    "preload_enter_exit_us": ("<=", 50.0, "hardware: 3-6 us; throw-away probe: 143-230 us"),
    "preload_startup_ms": ("<=", 150.0, "CPython start + sgxemu import + machine"),
}

if __name__ == "__main__":
    for name, fn in BENCHMARKS.items():
        print(f"{name}: {fn(False):.2f}")
