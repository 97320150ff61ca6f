"""Tracing: record a flow through host, kernel, CPU and enclave threads, and draw it.

    from sgxemu.trace import Tracer, record
    trace = record(scenario, machine)        # or: Tracer().attach(machine) ... .detach()
    trace.tracer.events                      # what happened, in order
    trace.tracer.before, trace.tracer.after  # the EPC/EPCM pictures

Scripts for `sgxemu trace SCRIPT.py` define `scenario(machine)`; they may use `test_enclave`,
`begin` and `section` from here.
"""

from __future__ import annotations

from .recorder import Event, Lane, Tracer
from .run import Trace, record
from .scenarios import ScenarioError, begin, make_machine, section, test_enclave
from .snapshot import EpcSnapshot, PageView, snapshot, snapshot_cpu

__all__ = [
    "EpcSnapshot",
    "Event",
    "Lane",
    "PageView",
    "ScenarioError",
    "Trace",
    "Tracer",
    "begin",
    "make_machine",
    "record",
    "section",
    "snapshot",
    "snapshot_cpu",
    "test_enclave",
]
