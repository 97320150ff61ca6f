"""The threat explorer: adversaries, SGX2 runtimes (careful and careless), properties, and a
bounded exhaustive / randomized search on the processor model the rest of sgxemu uses.

    from sgxemu.explore import make_world, bfs, run_matrix
    world = make_world("jit-unchecked", "colluding", "merged")
    result = bfs(world, 6)            # result.traces["wx"]: a shortest attack trace

See docs/threats.md for the design and the verdict matrix it produced.
"""

from .adversaries import ADVERSARIES, Adversary, kernel_caps, kernels, make_world, protocol
from .matrix import Cell, CellsDone, Matrix, explore_cell, run_matrix
from .properties import PROPERTIES, Property
from .render import numbered, sequence_svg, sequence_text, steps
from .runtimes import RUNTIMES, Runtime, runtime
from .search import Result, bfs, random_search, replay, shrink

__all__ = [
    "ADVERSARIES",
    "PROPERTIES",
    "RUNTIMES",
    "Adversary",
    "Cell",
    "CellsDone",
    "Matrix",
    "Property",
    "Result",
    "Runtime",
    "bfs",
    "explore_cell",
    "kernel_caps",
    "kernels",
    "make_world",
    "numbered",
    "protocol",
    "random_search",
    "replay",
    "run_matrix",
    "runtime",
    "sequence_svg",
    "sequence_text",
    "shrink",
    "steps",
]
