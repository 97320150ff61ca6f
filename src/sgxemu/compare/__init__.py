"""One set of enclave-runtime flows run on every SGX2 driver design, measured from the machine.

`run_comparison()` -> `FlowResult`s; `report` renders them (terminal table, HTML with a chart,
JSON). The CLI is `sgxemu compare`.
"""

from .flows import FLOWS, Flow
from .measure import FlowResult, run_comparison, run_flow
from .runtime import ComparisonEnclave, make_enclave

__all__ = [
    "FLOWS",
    "ComparisonEnclave",
    "Flow",
    "FlowResult",
    "make_enclave",
    "run_comparison",
    "run_flow",
]
