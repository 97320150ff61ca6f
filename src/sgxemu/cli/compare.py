"""`sgxemu compare`: run the enclave-runtime flows on every SGX2 driver design."""

from __future__ import annotations

from pathlib import Path

import click

from ..compare.flows import FLOWS
from ..linux.variants import KERNELS
from .errors import emit_json
from .progress import live_progress


@click.command("compare")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML report (with a chart) to FILE.")
@click.option("--flow", "flows", multiple=True, type=click.Choice(list(FLOWS)),
              help="Run only this flow (repeatable). Default: all.")
@click.option("--kernel", "kernels", multiple=True, type=click.Choice(list(KERNELS)),
              help="Run only on this kernel design (repeatable). Default: all.")
def command(as_json: bool, html_file: Path | None, flows: tuple[str, ...],
            kernels: tuple[str, ...]) -> None:
    """Run heap growth, shrink, JIT W^X, EMODPE relaxing, a new TCS, guard pages and
    oversubscription on merged, v1, v2, soft-restrict and always-mmap, and report what each
    cost and who enforced each permission (all counted by the machine).

    A progress bar over the (flow, design) cells runs on a terminal (not with --json)."""
    from ..compare.measure import FlowResult, run_comparison
    from ..compare.report import html_report, print_tables, to_json

    with live_progress(disable=as_json) as progress:
        task = progress.add_task("starting", total=len(flows or FLOWS) * len(kernels or KERNELS))

        # A cell takes from a few ms to seconds: draw each one as it starts.
        def started(flow: str, kernel: str) -> None:
            progress.update(task, description=f"{flow} on {kernel}", refresh=True)

        def done(_r: FlowResult, n: int, total: int) -> None:
            progress.update(task, completed=n, total=total, refresh=True)

        results = run_comparison(flows or None, kernels or None, on_start=started, on_done=done)
    if html_file is not None:
        html_file.write_text(html_report(results), encoding="utf-8")
    if as_json:
        emit_json(to_json(results))
        return
    print_tables(results)
    if html_file is not None:
        click.echo(f"HTML report written to {html_file}")
