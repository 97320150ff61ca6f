"""Fixtures for the Linux-model tests: the test enclave, a signing key, machines that must end
with an empty EPC, and a small helper for selftest-style enclave calls."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sgxemu import Machine
from sgxemu.exec.scripted import ScriptedEngine, ScriptedProgram
from sgxemu.exec.scripted_selftest import selftest_program
from sgxemu.linux import invariants as linux_invariants
from sgxemu.linux.enclcall import EnclCaller
from sgxemu.linux.load import LoadedEnclave, encl_build
from sgxemu.linux.process import Process
from sgxemu.loader.selftest_layout import EnclaveImage


def scripted(program: ScriptedProgram) -> Callable[..., ScriptedEngine]:
    return lambda cpu, lp, mem: ScriptedEngine(cpu, lp, mem, program)


MachineFactory = Callable[..., Machine]


@pytest.fixture
def make_machine(image: EnclaveImage) -> Iterator[MachineFactory]:
    """Machines running the scripted test enclave; each must end with an empty EPC."""
    made: list[Machine] = []

    def make(**kw: Any) -> Machine:
        kw.setdefault("epc_size", 4 << 20)
        kw.setdefault("engine", scripted(selftest_program(image)))
        kw.setdefault("arena_size", 1 << 30)
        m = Machine(**kw)
        made.append(m)
        return m

    yield make
    for m in made:
        linux_invariants.check(m)  # the driver's records agree with each other and the EPCM
        for proc in list(m.processes.values()):
            proc.exit()
        assert not m.cpu.epcm, f"EPC not empty after every process exited: {len(m.cpu.epcm)}"
        assert m.epc.nr_free_pages == m.cpu.epc.npages
        assert not m.encls.warnings, m.encls.warnings
        m.cpu.close()


@pytest.fixture
def machine(make_machine: MachineFactory) -> Machine:
    return make_machine()


@pytest.fixture
def proc(machine: Machine) -> Process:
    return machine.spawn()


@pytest.fixture
def encl(proc: Process, image: EnclaveImage, sigstruct: bytes) -> LoadedEnclave:
    return encl_build(proc, image, sigstruct=sigstruct)


@pytest.fixture
def caller(proc: Process, encl: LoadedEnclave) -> EnclCaller:
    return EnclCaller(proc, encl)
