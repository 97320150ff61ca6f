"""The live progress display of long commands (selftest, compare, explore).

One rule for all of them: a transient rich progress bar, never with --json, and drawn only on a
terminal (rich draws nothing on a pipe or a file: logs and captured output stay clean). The
engines know nothing of it: they take plain callables, which the commands point here.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


def live_progress(console: Console | None = None, *, disable: bool = False) -> Progress:
    """A progress display on `console` (default: stderr, so stdout stays the command's
    output); `disable` (--json) turns it off entirely."""
    return Progress(
        SpinnerColumn(), TextColumn("{task.description:<48}"), BarColumn(),
        MofNCompleteColumn(), TimeElapsedColumn(),
        console=console if console is not None else Console(stderr=True),
        transient=True, disable=disable,
    )  # fmt: skip
