"""Fixtures shared by the loader tests: a machine whose EPC must be empty once every process
exited (what loading left behind is freed with the process), and a process on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sgxemu import Machine
from sgxemu.linux.process import Process


@pytest.fixture
def machine() -> Iterator[Machine]:
    m = Machine(epc_size=8 << 20, cpus=1)
    yield m
    for proc in list(m.processes.values()):
        proc.exit()
    assert not m.cpu.epcm, "EPC not empty after every process exited"
    m.cpu.close()


@pytest.fixture
def proc(machine: Machine) -> Process:
    return machine.spawn()
