"""The event recorder and the EPC snapshot, through the Python API."""

from __future__ import annotations

import pytest

from sgxemu.arch.constants import PageType, secinfo_flags
from sgxemu.hw.faults import GeneralProtection
from sgxemu.hw.processor import Processor
from sgxemu.leafkit import LeafKit
from sgxemu.trace import Tracer, make_machine, record, snapshot
from sgxemu.trace.diagram import BAND, build
from sgxemu.trace.scenarios import BUILTIN
from sgxemu.trace.scenarios import test_enclave as load_test_enclave
from sgxemu.trace.svg import render_html, render_svg

BASE, SIZE = 0x10_0000, 0x10_0000


def test_no_tracer_by_default() -> None:
    cpu = Processor(epc_size=1 << 20)
    assert cpu.tracer is None
    cpu.close()
    m = make_machine()
    assert m.tracer is None and m.cpu.tracer is None
    m.close()


def test_bare_processor_leaves_and_faults() -> None:
    kit = LeafKit(epc_size=1 << 20)
    tracer = Tracer().attach_cpu(kit.cpu)
    encl = kit.ecreate(BASE, SIZE)
    kit.eadd(encl, BASE + 0x1000, bytes(4096), secinfo_flags(PageType.PT_REG, 3))
    with pytest.raises(GeneralProtection):
        kit.eaug(encl, BASE + 0x2000)  # not initialized: #GP, recorded and passed on
    tracer.detach()
    assert kit.cpu.tracer is None
    leaves = [(e.data["leaf"], e.result, e.error) for e in tracer.events if e.kind == "encls"]
    assert leaves[0] == ("ECREATE", "0", False)
    assert leaves[1] == ("EADD", "0 · REG RW-", False)
    assert [leaf for leaf, _, _ in leaves[2:-1]] == ["EEXTEND"] * 16
    assert leaves[-1] == ("EAUG", "#GP", True)
    assert tracer.before is not None and tracer.before.pages == []
    assert tracer.after is not None
    assert [(p.type, p.rights) for p in tracer.after.pages] == [("SECS", "---"), ("REG", "RW-")]
    kit.cpu.close()


def test_snapshot_of_a_loaded_enclave() -> None:
    m = make_machine()
    t = load_test_enclave(m, warm=False)
    snap = snapshot(m, "now")
    types = [p.type for p in snap.pages if p.owner is not None]
    assert types[:1] == ["SECS"] or "SECS" in types
    assert types.count("TCS") == 2
    assert snap.resident == len(m.cpu.epcm) and snap.evicted == 0
    assert [e.base for e in snap.enclaves] == [t.base]
    tcs = [p for p in snap.pages if p.type == "TCS"]
    assert [p.offset for p in tcs] == [0, 0x1000] and all(p.rights == "---" for p in tcs)
    m.close()


def test_record_and_render_a_flow() -> None:
    m = make_machine()
    trace = record(BUILTIN["trim-remove"].fn, m, "trim-remove")
    m.close()
    assert trace.error is None
    d = build(trace.tracer, "t")
    bands = [s.text for s in d.steps if s.kind == BAND]
    assert bands[0].startswith("setup, folded")
    assert "EACCEPT(TRIM|MODIFIED), then REMOVE_PAGES: EREMOVE" in bands
    assert [lane.title for lane in d.lanes] == ["host", "kernel", "CPU", "enclave T0"]
    full = build(trace.tracer, "t", full=True)
    assert len(full.steps) > len(d.steps)
    svg = render_svg(d, trace.tracer.before, trace.tracer.after)
    assert svg.count("<svg") == 5  # the frame, the diagram, two EPC pictures, the legend
    page = render_html(d, trace.tracer.before, trace.tracer.after)
    assert "ENCLS[EREMOVE]" in page and "TRIM" in page


def test_scenario_error_keeps_the_trace() -> None:
    m = make_machine(sgx2=False)
    from sgxemu.trace.scenarios import ScenarioError

    trace = record(BUILTIN["eaug-on-fault"].fn, m, "x", catch=(ScenarioError,))
    m.close()
    assert trace.error is not None and "SGX2" in trace.error
    assert any(e.kind == "syscall" for e in trace.tracer.events)
