"""How every sgxemu command fails: one line saying what is wrong and what to do, a non-zero exit
status, and a traceback only with `sgxemu --debug`."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import click

DEBUG_KEY = "sgxemu.debug"


class CliError(click.ClickException):
    """Bad input: `what` is wrong; `todo` says what to do about it."""

    exit_code = 1

    def __init__(self, what: str, todo: str = "") -> None:
        super().__init__(f"{what}; {todo}" if todo else what)


class UsageLineError(CliError):
    """A usage error (bad option or argument) on one line."""

    exit_code = 2


def debug_enabled(ctx: click.Context | None = None) -> bool:
    ctx = ctx or click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().meta.get(DEBUG_KEY))


def describe(exc: BaseException) -> str:
    """One line for an exception no command turned into a CliError."""
    from ..loader.selftest_layout import EnclaveFormatError
    from ..sign import SigningError
    from ..testenclave import EnclaveBuildError

    if isinstance(exc, EnclaveBuildError):
        return f"{exc}; install gcc (the test enclave is built with it) or pass an ELF"
    if isinstance(exc, EnclaveFormatError):
        return f"{exc}; give a 64-bit x86-64 enclave ELF laid out like the kernel selftest's test_encl.elf"
    if isinstance(exc, SigningError):
        return f"{exc}; make a key with 'sgxemu sign --gen-key KEY.pem'"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"cannot use {exc.filename}: {exc.strerror}; check the path and its permissions"
    return (
        f"internal error: {type(exc).__name__}: {exc}; "
        "run 'sgxemu --debug ...' for the traceback and report it"
    )


class SgxemuGroup(click.Group):
    """Turns errors in subcommands into one line (with the traceback first under --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except click.UsageError as exc:
            path = exc.ctx.command_path.split()[1:] if exc.ctx is not None else []
            where = " ".join(["sgxemu", *path])
            raise UsageLineError(exc.format_message().rstrip("."), f"see '{where} --help'") from exc
        except click.ClickException:
            if debug_enabled(ctx):
                click.echo(traceback.format_exc(), err=True, nl=False)
            raise
        except Exception as exc:
            if debug_enabled(ctx):
                click.echo(traceback.format_exc(), err=True, nl=False)
            raise CliError(describe(exc)) from exc


def emit_json(obj: dict[str, Any]) -> None:
    """Print one JSON object (the --json output of every command)."""
    click.echo(json.dumps(obj))


def existing_file(path: str, what: str) -> Path:
    """`path` as a readable regular file, or a CliError naming `what` it should be."""
    p = Path(path)
    if not p.exists():
        raise CliError(f"{what} {path}: no such file", "check the path")
    if not p.is_file():
        raise CliError(f"{what} {path}: not a regular file", f"give the path of the {what} file")
    try:
        with p.open("rb"):
            pass
    except OSError as exc:
        raise CliError(f"{what} {path}: cannot read it ({exc.strerror})", "check its permissions") from exc
    return p


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_SIZE = 64 << 30


def parse_size(text: str, what: str, *, minimum: int = 4096, maximum: int = MAX_SIZE) -> int:
    """A size like 4096, 512K, 8M, 128M, 1G (also 8MiB, 8mb): a multiple of 4 KiB in range."""
    raw = text.strip().upper().replace("IB", "").rstrip("B")
    number, unit = raw, ""
    if raw and raw[-1] in _UNITS:
        number, unit = raw[:-1], raw[-1]
    try:
        value = int(number, 0) * _UNITS[unit]
    except ValueError:
        raise UsageLineError(
            f"{what} {text!r} is not a size", "write it like 8M, 128M, 1G or 4096"
        ) from None
    if value % 4096:
        raise UsageLineError(f"{what} {text} is not a multiple of 4 KiB (a page)", "use e.g. 8M")
    if value < minimum:
        raise UsageLineError(f"{what} {text} is too small", f"use at least {human_size(minimum)}")
    if value > maximum:
        raise UsageLineError(f"{what} {text} is too large", f"use at most {human_size(maximum)}")
    return value


def human_size(n: int) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)
