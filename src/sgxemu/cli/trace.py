"""`sgxemu trace SCENARIO|SCRIPT.py [--svg FILE] [--html FILE] [--json]`: record a flow and draw
it as a sequence diagram (host, kernel, CPU, one lifeline per enclave thread), with the EPC and
its EPCM before and after.

SCENARIO is a built-in flow (`sgxemu trace --list`) or a kernel selftest by its main.c name;
SCRIPT.py is a Python file defining `def scenario(machine) -> None`.

Exit status: 0 the flow ran as expected, 1 it stopped early (the trace up to there is still
drawn and written) or the input was bad (one line on stderr).
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .errors import CliError, debug_enabled, emit_json, parse_size

ENGINES = ("scripted", "native")


def _list(console: Console) -> None:
    from ..trace.scenarios import BUILTIN, selftest_scenarios

    table = Table(title="Scenarios for `sgxemu trace`", title_justify="left")
    table.add_column("name")
    table.add_column("what")
    for s in BUILTIN.values():
        table.add_row(s.name, s.summary)
    for s in selftest_scenarios().values():
        table.add_row(s.name, s.summary)
    console.print(table)
    console.print("or a Python file defining `def scenario(machine) -> None` (see docs/tutorials).")


def _write(path: str, text: str, what: str) -> Path:
    p = Path(path)
    if p.parent and not p.parent.is_dir():
        raise CliError(f"cannot write the {what} to {path}: {p.parent} is not a directory", "create it first")
    try:
        p.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write the {what} to {path}: {exc.strerror}", "check the path") from exc
    return p


@click.command(name="trace")
@click.argument("target", required=False, metavar="SCENARIO|SCRIPT.py")
@click.option("--svg", "svg_path", metavar="FILE", help="Write the diagram and the EPC pictures as one SVG.")
@click.option("--html", "html_path", metavar="FILE", help="Write a self-contained HTML page.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the diagram.")
@click.option("--engine", type=click.Choice(ENGINES), default="scripted", show_default=True,
              help="How enclave code runs: the scripted test enclave, or the compiled one on Unicorn.")
@click.option("--epc", "epc", metavar="SIZE", help="EPC size (default 4M; the reclaim flows use 1M).")
@click.option("--kernel", "kernel", metavar="VARIANT",
              help="Driver design: merged (the default), v1, v2, soft-restrict, always-mmap.")
@click.option("--sgx1", is_flag=True, help="An SGX1-only processor (SGX2 flows then stop early).")
@click.option("--full", is_flag=True, help="Draw the setup too, not only the part after it.")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
def command(
    target: str | None, svg_path: str | None, html_path: str | None, as_json: bool, engine: str,
    epc: str | None, kernel: str | None, sgx1: bool, full: bool, list_only: bool,
) -> None:
    """Record a flow and draw it: host, kernel, CPU and enclave threads, step by step."""
    from ..trace import diagram as dia
    from ..trace.run import record
    from ..trace.scenarios import ScenarioError, all_scenarios, load_script, make_machine
    from ..trace.svg import render_html, render_svg

    console = Console()
    if list_only:
        _list(console)
        return
    if not target:
        raise CliError("no scenario given", "name one (sgxemu trace --list) or give a SCRIPT.py")
    is_script = target.endswith(".py") or "/" in target or Path(target).is_file()
    machine_kw: dict[str, object] = {}
    if is_script:
        try:
            fn = load_script(target)
        except ScenarioError as exc:
            raise CliError(str(exc), "a script defines `def scenario(machine) -> None`") from exc
        name = Path(target).name
        title = f"sgxemu trace {name}"
    else:
        scenarios = all_scenarios()
        sc = scenarios.get(target) or scenarios.get(target.replace("-", "_"))
        if sc is None:
            raise CliError(
                f"unknown scenario {target!r}",
                f"choose one of {', '.join(scenarios)} (sgxemu trace --list), or give a SCRIPT.py",
            )
        fn, name = sc.fn, sc.name
        machine_kw.update(sc.machine)
        title = f"sgxemu trace {name}: {sc.summary}"
    if epc is not None:
        machine_kw["epc_size"] = parse_size(epc, "--epc", minimum=64 << 10)
    if sgx1:
        machine_kw["sgx2"] = False
    if kernel is not None:
        from ..linux.variants import KERNELS

        if kernel not in KERNELS:
            raise CliError(f"unknown kernel design {kernel!r}", f"choose one of {', '.join(KERNELS)}")
        machine_kw["kernel"] = kernel
        title += f" (kernel: {kernel})"
    machine = make_machine(engine, **machine_kw)
    try:
        trace = record(fn, machine, name, catch=(ScenarioError, OSError, Exception))
        failure = trace.error
        if failure is not None and debug_enabled():
            click.echo(trace.traceback, err=True, nl=False)
    finally:
        machine.close()
    tracer = trace.tracer
    d = dia.build(tracer, title, full=full)
    steps = [s for s in d.steps if s.kind != dia.BAND]
    summary = (
        f"{len(tracer.events)} events, {len(steps)} steps drawn; participants: "
        + ", ".join(lane.title for lane in d.lanes)
    )
    files: dict[str, str] = {}
    if svg_path:
        files["svg"] = str(_write(svg_path, render_svg(d, tracer.before, tracer.after), "SVG"))
    if html_path:
        html = render_html(d, tracer.before, tracer.after, error=failure, summary=summary)
        files["html"] = str(_write(html_path, html, "HTML page"))
    if as_json:
        out = trace.to_json()
        out["diagram"] = d.to_json()
        out["files"] = files
        emit_json(out)
    else:
        from ..trace.term import print_diagram, print_epc

        print_diagram(d, console)
        if tracer.before is not None and tracer.after is not None:
            print_epc(tracer.before, tracer.after, console)
        console.print(summary, style="dim", soft_wrap=True)
        for what, path in files.items():
            console.print(f"wrote {what.upper()}: {path}", soft_wrap=True)
    if failure is not None:
        raise CliError(f"the scenario stopped early: {failure}", "the trace above shows how far it got")
