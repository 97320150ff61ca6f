"""Fixtures for the driver-variant tests: the test enclave, a key, and machines of any kernel
design that must end with an empty EPC."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from variants_support import Built

from sgxemu import Machine
from sgxemu.exec.scripted import ScriptedEngine
from sgxemu.exec.scripted_selftest import selftest_program
from sgxemu.linux.enclcall import EnclCaller
from sgxemu.linux.load import encl_build
from sgxemu.loader.selftest_layout import EnclaveImage

MachineFactory = Callable[..., Machine]


@pytest.fixture
def make_machine(image: EnclaveImage) -> Iterator[MachineFactory]:
    """Machines (kernel=... selects the design) running the scripted test enclave."""
    made: list[Machine] = []

    def make(**kw: Any) -> Machine:
        kw.setdefault("epc_size", 4 << 20)
        program = selftest_program(kw.pop("image", image))
        kw.setdefault("engine", lambda c, lp, mem: ScriptedEngine(c, lp, mem, program))
        kw.setdefault("arena_size", 1 << 30)
        m = Machine(**kw)
        made.append(m)
        return m

    yield make
    for m in made:
        for proc in list(m.processes.values()):
            proc.exit()
        assert not m.cpu.epcm, f"EPC not empty after every process exited: {len(m.cpu.epcm)}"
        assert m.epc.nr_free_pages == m.cpu.epc.npages
        assert not m.encls.warnings, m.encls.warnings
        m.cpu.close()


@pytest.fixture
def build(
    make_machine: MachineFactory, image: EnclaveImage, sigstruct: bytes
) -> Callable[..., Built]:
    def make(kernel: str, **kw: Any) -> Built:
        m = make_machine(kernel=kernel, **kw)
        proc = m.spawn()
        encl = encl_build(proc, image, sigstruct=sigstruct)
        return Built(m, proc, encl, EnclCaller(proc, encl), image)

    return make
