"""From recorded events to the steps of a sequence diagram.

Every renderer (terminal, SVG, HTML) draws the same steps:

- an arrow between two participants (a call, a return, a fault), or a note on one lifeline, or
  a band across the whole diagram (the titled parts of a scenario);
- events before `Tracer.begin` (the setup) become one band that counts what happened, unless
  the whole trace is asked for;
- a run of three or more ENCLS leaves in a row (ADD_PAGES' EADD + EEXTENDs, the reclaimer's
  EBLOCK/ETRACK/EWB batches) becomes one arrow that counts them;
- identical consecutive steps become one step marked "×N".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .recorder import CPU, HOST, KERNEL, Event, Lane, Tracer

ARROW, NOTE, BAND = "arrow", "note", "band"

# Arrow styles.
CALL, RETURN, FAULT, ENTER = "call", "return", "fault", "enter"

_STYLE = {
    "syscall": CALL, "sysret": RETURN, "encls": CALL, "enclu": CALL, "enter": ENTER,
    "exit": RETURN, "aex": FAULT, "fault": FAULT, "fault_end": RETURN,
}
MIN_FOLD = 3


@dataclass
class Step:
    kind: str  # ARROW, NOTE or BAND
    src: str
    dst: str
    label: str
    result: str = ""
    style: str = CALL
    error: bool = False
    count: int = 1
    seqs: list[int] = field(default_factory=list)
    detail: str = ""  # the full text (tooltip)

    @property
    def text(self) -> str:
        """The label as drawn: with the result and the repeat count."""
        out = self.label
        if self.result:
            out += f" → {self.result}"
        if self.count > 1:
            out += f"  ×{self.count}"
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "src": self.src, "dst": self.dst, "label": self.label,
            "result": self.result, "style": self.style, "error": self.error,
            "count": self.count, "events": self.seqs, "text": self.text,
        }


@dataclass
class Diagram:
    title: str
    lanes: list[Lane]
    steps: list[Step]

    def lane_index(self, lane_id: str) -> int:
        for i, lane in enumerate(self.lanes):
            if lane.id == lane_id:
                return i
        raise KeyError(lane_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "participants": [lane.to_json() for lane in self.lanes],
            "steps": [s.to_json() for s in self.steps],
        }


def _step(ev: Event) -> Step:
    if ev.kind == "phase":
        return Step(BAND, HOST, HOST, ev.label, seqs=[ev.seq], detail=ev.label)
    if ev.kind in ("note", "vdso_return"):
        return Step(NOTE, ev.src, ev.src, ev.label, error=ev.error, seqs=[ev.seq], detail=ev.label)
    style = _STYLE.get(ev.kind, CALL)
    if ev.kind == "sysret":  # the label already reads "ioctl = 0 (count=0x1000)"
        return Step(ARROW, ev.src, ev.dst, ev.label, "", style, ev.error, seqs=[ev.seq], detail=ev.label)
    detail = f"{ev.label} → {ev.result}" if ev.result else ev.label
    return Step(ARROW, ev.src, ev.dst, ev.label, ev.result, style, ev.error, seqs=[ev.seq], detail=detail)


def _counts(names: list[str]) -> str:
    c = Counter(names)
    return ", ".join(f"{n} ×{k}" if k > 1 else n for n, k in c.items())


def _fold_encls(events: list[Event]) -> Step:
    leaves = [str(e.data.get("leaf", "?")) for e in events]
    errors = [e for e in events if e.error]
    context = events[0].data.get("context")
    prefix = f"{context}: " if context else ""
    result = "all 0" if not errors else f"{len(errors)} not 0: {_counts([e.result.split(' ')[0] for e in errors])}"
    detail = "\n".join(f"{e.label} → {e.result}" for e in events)
    return Step(
        ARROW, KERNEL, CPU, f"{prefix}ENCLS ×{len(events)}: {_counts(leaves)}", result, CALL,
        bool(errors), seqs=[e.seq for e in events], detail=detail,
    )


def _setup_summary(events: list[Event]) -> Step:
    syscalls = [
        str(e.data.get("args", {}).get("request") or e.data.get("syscall"))
        if e.data.get("syscall") == "ioctl" else str(e.data.get("syscall"))
        for e in events if e.kind == "syscall"
    ]
    encls = [str(e.data.get("leaf")) for e in events if e.kind == "encls"]
    enclu = [str(e.data.get("leaf")) for e in events if e.kind == "enclu"]
    parts = []
    if syscalls:
        parts.append(f"{len(syscalls)} system calls ({_counts(syscalls)})")
    if encls:
        parts.append(f"ENCLS ×{len(encls)} ({_counts(encls)})")
    if enclu:
        parts.append(f"ENCLU ×{len(enclu)} ({_counts(enclu)})")
    label = "setup, folded: " + ("; ".join(parts) if parts else "nothing recorded")
    return Step(BAND, HOST, HOST, label, seqs=[e.seq for e in events], detail=label, style="setup")


def build(tracer: Tracer, title: str = "", *, full: bool = False) -> Diagram:
    """The steps of the trace in `tracer` (all of it when `full`)."""
    events = tracer.events
    steps: list[Step] = []
    if tracer.begun and not full:
        setup = [e for e in events if e.phase == 0]
        if setup:
            steps.append(_setup_summary(setup))
        events = [e for e in events if e.phase > 0]
    i = 0
    while i < len(events):
        ev = events[i]
        if ev.kind == "encls":
            j = i
            while (
                j < len(events) and events[j].kind == "encls"
                and events[j].data.get("context") == ev.data.get("context")
            ):
                j += 1
            if j - i >= MIN_FOLD:
                steps.append(_fold_encls(events[i:j]))
                i = j
                continue
        steps.append(_step(ev))
        i += 1
    merged: list[Step] = []
    for s in steps:
        last = merged[-1] if merged else None
        if (
            last is not None and s.kind != BAND and (last.kind, last.src, last.dst, last.label, last.result)
            == (s.kind, s.src, s.dst, s.label, s.result)
        ):
            last.count += 1
            last.seqs.extend(s.seqs)
            continue
        merged.append(s)
    used = {HOST, KERNEL, CPU} | {s.src for s in merged} | {s.dst for s in merged}
    lanes = [lane for lane in tracer.lanes.values() if lane.id in used]
    return Diagram(title, lanes, merged)
