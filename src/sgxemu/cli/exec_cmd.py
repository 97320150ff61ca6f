"""`sgxemu exec`: run an unmodified SGX host program against sgxemu, in its own process.

The program runs with the preload library (`sgxemu.preload`) in LD_PRELOAD: /dev/sgx_enclave,
the vDSO's __vdso_sgx_enter_enclave, ENCLU and CPUID leaf 0x12 are served by an emulated
machine embedded in the process. Options override the SGXEMU_* environment variables
(docs/preload.md); the program's exit status is sgxemu's.

Without --json sgxemu replaces itself with the program (execve). With --json it runs the program
as a child, captures its stdout into the JSON object (so sgxemu's stdout is that one object and
nothing else) and reads the counters the child's emulator left at exit (`preload.stats`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from .errors import CliError, UsageLineError, emit_json, parse_size
from .selftest import _check_kernel

if TYPE_CHECKING:
    from ..preload.config import PreloadConfig


def _preload_env(
    epc: str | None, sgx1: bool, kernel: str | None, cpuid: str | None, xstate: bool
) -> tuple[dict[str, str], PreloadConfig]:
    """The environment of the program (SGXEMU_* from the options, then the library) and the
    machine it configures."""
    from ..preload.build import PreloadBuildError, build_preload
    from ..preload.config import PreloadConfig

    env = dict(os.environ)
    if epc is not None:
        env["SGXEMU_EPC"] = str(parse_size(epc, "EPC size"))
    if sgx1:
        env["SGXEMU_SGX1"] = "1"
    if kernel is not None:
        _check_kernel(kernel)
        env["SGXEMU_KERNEL"] = kernel
    if cpuid is not None:
        env["SGXEMU_CPUID"] = cpuid
    if xstate:
        env["SGXEMU_XSTATE"] = "1"
    try:
        config = PreloadConfig.from_env(env)
    except ValueError as exc:
        raise UsageLineError(f"bad SGXEMU_* setting: {exc}") from None
    try:
        lib = build_preload()
    except PreloadBuildError as exc:
        raise CliError(f"sgxemu exec: {exc}") from None
    env["SGXEMU_PYTHON"] = sys.executable
    previous = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{lib}:{previous}" if previous else str(lib)
    return env, config


def _shown_env(env: dict[str, str]) -> dict[str, str]:
    return {k: env[k] for k in sorted(env) if k.startswith("SGXEMU_") or k == "LD_PRELOAD"}


@contextlib.contextmanager
def _interrupts_to_the_child() -> Iterator[None]:
    """While the child runs, Ctrl-C and Ctrl-\\ are the child's business (as in system(3)):
    sgxemu stays to report how it ended. A handler, not SIG_IGN, so the child (after execve)
    gets the default disposition back."""
    if not _main_thread():
        yield
        return
    saved = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGQUIT)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"  # a real-time signal has no name


def _run_captured(path: str, argv: list[str], env: dict[str, str]) -> tuple[dict[str, Any], int]:
    """Run the program as a child with its stdout captured: its outcome and counters, and the
    exit status sgxemu takes (the program's; 128+N for signal N, as a shell reports it)."""
    from ..preload.stats import STATS_ENV, read_stats

    with tempfile.TemporaryDirectory(prefix="sgxemu-exec-") as stats_dir:
        env = {**env, STATS_ENV: stats_dir}
        started = time.perf_counter()
        with _interrupts_to_the_child():
            try:
                child = subprocess.Popen(argv, executable=path, env=env, stdout=subprocess.PIPE)
            except OSError as exc:
                raise CliError(f"cannot run {argv[0]}: {exc.strerror}") from None
            out, _ = child.communicate()
        seconds = time.perf_counter() - started
        counters = read_stats(stats_dir, child.pid)
    code = child.returncode
    outcome = {
        "exit_status": code if code >= 0 else None,
        "signal": _signal_name(-code) if code < 0 else None,
        "seconds": round(seconds, 3),
        "stdout": out.decode("utf-8", errors="replace"),
        "counters": counters,
    }
    return outcome, code if code >= 0 else 128 - code


@click.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--sgx1", is_flag=True, help="An SGX1-only processor (no SGX2/EDMM).")
@click.option("--epc", metavar="SIZE", default=None, help="EPC size, e.g. 64M (default 128M).")
@click.option("--kernel", "kernel", metavar="VARIANT", default=None,
              help="Driver design (linux.variants.KERNELS; default: merged).")  # fmt: skip
@click.option("--cpuid", type=click.Choice(["auto", "fault", "patch", "off"]), default=None,
              help="How CPUID is emulated (default auto: faulting, else patching).")  # fmt: skip
@click.option("--xstate", is_flag=True, help="Pass x87/SSE registers between host and enclave.")
@click.option("--print-env", is_flag=True, help="Print the environment settings and exit.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object about the run: program, machine, exit status, the "
                   "program's stdout (captured: it is not printed) and the emulator's counters. "
                   "The program's stderr is not captured.")  # fmt: skip
@click.argument("program", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def command(
    ctx: click.Context, sgx1: bool, epc: str | None, kernel: str | None, cpuid: str | None,
    xstate: bool, print_env: bool, as_json: bool, program: str | None, args: tuple[str, ...],
) -> None:  # fmt: skip
    """Run PROGRAM (an unmodified SGX host program) on an emulated SGX machine.

    The exit status is PROGRAM's (128+N if signal N ended it under --json).

    \b
    sgxemu exec -- ./test_sgx
    sgxemu exec --sgx1 --epc 64M -- ./my_host --flag
    sgxemu exec --json -- ./my_host > run.json     # its stdout is in run.json's "stdout"
    """
    env, config = _preload_env(epc, sgx1, kernel, cpuid, xstate)
    if print_env:
        shown = _shown_env(env)
        if as_json:
            emit_json({"env": shown, "machine": asdict(config)})
            return
        for key, value in shown.items():
            click.echo(f"{key}={value}")
        return
    if program is None:
        raise UsageLineError("no program to run", "write sgxemu exec [OPTIONS] -- PROGRAM [ARGS]")
    path = shutil.which(program, path=env.get("PATH")) if os.sep not in program else program
    if path is None or not os.path.exists(path):
        raise CliError(f"program {program!r} not found", "give a path or a command on PATH")
    sys.stdout.flush()
    sys.stderr.flush()
    if as_json:
        outcome, status = _run_captured(path, [program, *args], env)
        emit_json({"program": program, "path": path, "args": list(args), "machine": asdict(config),
                   **outcome})  # fmt: skip
        ctx.exit(status)
    try:
        os.execve(path, [program, *args], env)
    except OSError as exc:
        raise CliError(f"cannot run {program}: {exc.strerror}") from None
