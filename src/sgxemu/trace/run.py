"""Run a scenario on a machine with a tracer attached."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .recorder import Tracer
from .scenarios import ScenarioError

if TYPE_CHECKING:
    from ..linux.machine import Machine


@dataclass
class Trace:
    """A recorded flow: its name, the tracer holding the events, and how the run ended."""

    name: str
    tracer: Tracer
    error: str | None = None  # the scenario raised: what (the trace up to there is kept)
    traceback: str = ""  # and where

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scenario": self.name, "ok": self.error is None, "error": self.error}
        out.update(self.tracer.to_json())
        return out


def record(
    fn: Callable[[Machine], None], machine: Machine, name: str = "scenario", *,
    catch: tuple[type[BaseException], ...] = (),
) -> Trace:
    """Run `fn(machine)` with a tracer attached; exceptions in `catch` end the run but keep the
    trace (`Trace.error`), others propagate after the tracer is detached."""
    tracer = Tracer().attach(machine)
    trace = Trace(name, tracer)
    try:
        fn(machine)
    except catch as e:
        trace.error = str(e) if isinstance(e, ScenarioError) else f"{type(e).__name__}: {e}"
        trace.traceback = traceback.format_exc()
    finally:
        tracer.detach()
    return trace
