"""`sgxemu selftest`: the Linux kernel's SGX selftests on an emulated machine."""

from __future__ import annotations

import os
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .errors import CliError, debug_enabled, emit_json, human_size, parse_size
from .progress import live_progress

_STYLE = {"PASS": "green", "FAIL": "bold red", "SKIP": "yellow"}


def _check_kernel(kernel: str | None) -> None:
    """Fail early, on one line, if the kernel variant cannot be had."""
    if kernel is None:
        return
    try:
        from ..linux.variants import KERNELS
    except ImportError:
        raise CliError(
            "this sgxemu has no kernel design variants", "run without --kernel"
        ) from None
    if kernel not in KERNELS:
        raise CliError(f"unknown kernel variant {kernel!r}", f"choose one of {', '.join(KERNELS)}")


@click.command(name="selftest")
@click.option("--kernel", "kernel", metavar="VARIANT", default=None,
              help="Driver design variant: merged (the default), v1, v2, soft-restrict, always-mmap.")
@click.option("--sgx1", is_flag=True, help="An SGX1-only processor: the 10 SGX2 tests skip, as on such hardware.")
@click.option("--epc", "epc", metavar="SIZE", default="8M", show_default=True,
              help="EPC size, 256K to 1G (8M, 128M, 1G). The oversubscription tests make a heap "
                   "this large, so time grows with it.")
@click.option("-k", "pattern", metavar="PATTERN", default=None,
              help="Run only the tests whose name contains PATTERN (or matches it as a glob).")
@click.option("--engine", type=click.Choice(["native", "scripted"]), default="native", show_default=True,
              help="native: the compiled test enclave on Unicorn; scripted: its Python model.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.pass_context
def command(
    ctx: click.Context, kernel: str | None, sgx1: bool, epc: str, pattern: str | None,
    engine: str, as_json: bool,
) -> None:
    """Run the 16 tests of the kernel's tools/testing/selftests/sgx on an emulated machine.

    Each test runs on a freshly booted machine with the given EPC, builds the test enclave
    through /dev/sgx_enclave as the kernel's load.c does, and asserts what the C test asserts.
    Exit status 1 if any test fails.
    """
    from ..selftests import SCENARIOS, SelftestConfig, SelftestSuite, select
    from ..selftests.scenarios import ENCL_HEAP_SIZE_DEFAULT

    epc_size = parse_size(epc, "--epc", minimum=256 << 10, maximum=1 << 30)
    names = select(pattern)
    if not names:
        raise CliError(f"no test matches -k {pattern!r}", "the tests are: " + ", ".join(SCENARIOS))
    _check_kernel(kernel)
    config = SelftestConfig(epc_size=epc_size, sgx2=not sgx1, engine=engine, kernel=kernel)
    suite = SelftestSuite()
    suite.sigstruct(suite.image(ENCL_HEAP_SIZE_DEFAULT))  # the key and the ELF, before timing
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = max(console.width, 120)  # logs: keep table rows on one line
    started = time.perf_counter()
    if as_json:
        results = suite.run_all(config, names)
    else:
        console.print(
            f"[bold]Linux SGX selftests[/] (tools/testing/selftests/sgx) on sgxemu: "
            f"EPC {human_size(epc_size)}, {'SGX1' if sgx1 else 'SGX2'}, "
            f"kernel {kernel or 'merged'}, engine {engine}, enclave {suite.elf.name}",
            soft_wrap=True,
        )
        progress = live_progress(console)
        with progress:
            task = progress.add_task("starting", total=len(names))
            results = suite.run_all(
                config,
                names,
                on_start=lambda name: progress.update(task, description=name),
                on_done=lambda _r: progress.advance(task),
            )
    elapsed = time.perf_counter() - started
    counts = {o: sum(r.outcome.value == o for r in results) for o in ("PASS", "FAIL", "SKIP")}
    if as_json:
        out: dict[str, Any] = {
            "config": config.to_json(),
            "tests": [r.to_json() for r in results],
            "passed": counts["PASS"],
            "failed": counts["FAIL"],
            "skipped": counts["SKIP"],
            "seconds": round(elapsed, 3),
            "ok": counts["FAIL"] == 0,
        }
        emit_json(out)
    else:
        table = Table()
        table.add_column("#", justify="right")
        table.add_column("test", no_wrap=True, min_width=max(len(r.name) for r in results))
        table.add_column("result")
        table.add_column("time", justify="right")
        table.add_column("reason")
        for i, r in enumerate(results, 1):
            result = f"[{_STYLE[r.outcome.value]}]{r.outcome.value}[/]"
            table.add_row(str(i), r.name, result, f"{r.seconds:.2f}s", r.reason)
        console.print(table)
        console.print(
            f"{len(results)} tests: {counts['PASS']} passed, {counts['FAIL']} failed, "
            f"{counts['SKIP']} skipped in {elapsed:.1f}s"
        )
        for r in results:
            if r.outcome.value != "FAIL":
                continue
            console.print(f"[bold red]FAIL[/] {r.name}:", soft_wrap=True)
            for line in r.failures:
                console.print(f"  {line}", soft_wrap=True, markup=False)
            for line in r.log:
                console.print(f"  # {line}", soft_wrap=True, markup=False)
            if r.traceback and debug_enabled(ctx):
                console.print(r.traceback, soft_wrap=True, markup=False)
    if counts["FAIL"]:
        ctx.exit(1)
