"""`sgxemu`: the command line. Each subcommand is a thin layer over the Python API."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from .. import __version__
from .errors import DEBUG_KEY, SgxemuGroup, emit_json


@click.group(cls=SgxemuGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sgxemu")
@click.option("--debug", is_flag=True, help="Show the traceback when a command fails.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """sgxemu: an emulator of Intel SGX2 and the Linux SGX driver ABI."""
    ctx.meta[DEBUG_KEY] = debug


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def demo(as_json: bool) -> None:
    """Build and EINIT an enclave through the leaves, then walk one page through SGX2."""
    from ..demo import run_demo

    result = run_demo()
    if as_json:
        emit_json(
            {
                "mrenclave": result.mrenclave.hex(),
                "mrenclave_offline": result.mrenclave_offline.hex(),
                "mrsigner": result.mrsigner.hex(),
                "steps": [vars(s) for s in result.steps],
            }
        )
        return
    console = Console()
    console.print(f"MRENCLAVE (EINIT)   {result.mrenclave.hex()}", soft_wrap=True)
    agree = "matches" if result.mrenclave == result.mrenclave_offline else "DIFFERS"
    console.print(f"MRENCLAVE (offline) {result.mrenclave_offline.hex()}  ({agree})", soft_wrap=True)
    console.print(f"MRSIGNER            {result.mrsigner.hex()}", soft_wrap=True)
    table = Table(title="One page through its SGX2 life cycle")
    for column in ("#", "step", "outcome", "EPCM entry after"):
        table.add_column(column)
    for i, s in enumerate(result.steps, 1):
        table.add_row(str(i), s.action, s.outcome, s.epcm)
    console.print(table)


def _register_commands() -> None:
    """Each further subcommand lives in its own module of this package and is added here."""
    import importlib

    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        cli.add_command(module.command)


# Modules of sgxemu.cli that each define a click command named `command`.
COMMAND_MODULES: tuple[str, ...] = ("measure", "selftest", "run", "sign", "trace", "compare", "exec_cmd", "explore")


def main() -> None:
    _register_commands()
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
