"""`sgxemu compare`: run the enclave-runtime flows on every SGX2 driver design."""

from __future__ import annotations

from pathlib import Path

import click

from ..compare.flows import FLOWS
from ..linux.variants import KERNELS


@click.command("compare")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
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
    cost and who enforced each permission (all counted by the machine)."""
    from ..compare.measure import run_comparison
    from ..compare.report import html_report, print_tables, to_json

    results = run_comparison(flows or None, kernels or None)
    if html_file is not None:
        html_file.write_text(html_report(results), encoding="utf-8")
    if as_json:
        click.echo(to_json(results))
        return
    print_tables(results)
    if html_file is not None:
        click.echo(f"HTML report written to {html_file}")
