"""`sgxemu exec`: run an unmodified SGX host program against sgxemu, in its own process.

The program runs with the preload library (`sgxemu.preload`) in LD_PRELOAD: /dev/sgx_enclave,
the vDSO's __vdso_sgx_enter_enclave, ENCLU and CPUID leaf 0x12 are served by an emulated
machine embedded in the process. Options override the SGXEMU_* environment variables
(docs/preload.md); the program's exit status is sgxemu's.
"""

from __future__ import annotations

import os
import shutil
import sys

import click

from .errors import CliError, UsageLineError, parse_size
from .selftest import _check_kernel


def _preload_env(
    epc: str | None, sgx1: bool, kernel: str | None, cpuid: str | None, xstate: bool
) -> dict[str, str]:
    """The environment of the program: SGXEMU_* from the options, then the library."""
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
        PreloadConfig.from_env(env)
    except ValueError as exc:
        raise UsageLineError(f"bad SGXEMU_* setting: {exc}") from None
    try:
        lib = build_preload()
    except PreloadBuildError as exc:
        raise CliError(f"sgxemu exec: {exc}") from None
    env["SGXEMU_PYTHON"] = sys.executable
    previous = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{lib}:{previous}" if previous else str(lib)
    return env


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
@click.argument("program", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(
    sgx1: bool, epc: str | None, kernel: str | None, cpuid: str | None, xstate: bool,
    print_env: bool, program: str | None, args: tuple[str, ...],
) -> None:  # fmt: skip
    """Run PROGRAM (an unmodified SGX host program) on an emulated SGX machine.

    \b
    sgxemu exec -- ./test_sgx
    sgxemu exec --sgx1 --epc 64M -- ./my_host --flag
    """
    env = _preload_env(epc, sgx1, kernel, cpuid, xstate)
    if print_env:
        for key in sorted(env):
            if key.startswith("SGXEMU_") or key == "LD_PRELOAD":
                click.echo(f"{key}={env[key]}")
        return
    if program is None:
        raise UsageLineError("no program to run", "write sgxemu exec [OPTIONS] -- PROGRAM [ARGS]")
    path = shutil.which(program, path=env.get("PATH")) if os.sep not in program else program
    if path is None or not os.path.exists(path):
        raise CliError(f"program {program!r} not found", "give a path or a command on PATH")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(path, [program, *args], env)
    except OSError as exc:
        raise CliError(f"cannot run {program}: {exc.strerror}") from None
