"""Run sgxemu's benchmarks and print each figure with its target.

    python bench/run.py [--quick] [--json] [-k NAME]

Targets are medians on the project's 2-core machine; the real-hardware figure each one beats is
shown beside it. Benchmarks never fail: they print. Record what you measured in
docs/performance.md with the date and the machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Modules providing BENCHMARKS {name: fn(quick) -> float} and TARGETS {name: (op, value, note)}.
MODULES = ("hw_bench", "native_bench", "scripted_bench", "linux_bench", "sdk_bench", "preload_bench", "explore_bench")


def collect() -> tuple[dict[str, Callable[[bool], float]], dict[str, tuple[str, float, str]]]:
    benches: dict[str, Callable[[bool], float]] = {}
    targets: dict[str, tuple[str, float, str]] = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        benches.update(getattr(module, "BENCHMARKS", {}))
        targets.update(getattr(module, "TARGETS", {}))
    return benches, targets


def meets(op: str, value: float, target: float) -> bool:
    return value <= target if op == "<=" else value >= target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (within 60 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("-k", dest="only", help="run only benchmarks whose name contains this")
    args = parser.parse_args()
    benches, targets = collect()
    results: dict[str, float] = {}
    started = time.perf_counter()
    for name, fn in benches.items():
        if args.only and args.only not in name:
            continue
        results[name] = round(fn(args.quick), 3)
        if not args.json:
            op, target, note = targets.get(name, ("", float("nan"), ""))
            verdict = ("meets" if meets(op, results[name], target) else "misses") if op else ""
            print(f"{name:40} {results[name]:>12,.2f}   target {op} {target:,} {verdict:7} [{note}]")
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                          "quick": args.quick, "seconds": round(elapsed, 1), **results}))
    else:
        print(f"({len(results)} benchmarks in {elapsed:.1f} s on {platform.machine()}, "
              f"Python {platform.python_version()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
