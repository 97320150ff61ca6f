"""The Machine/Process surface: the export, threads and logical processors, counters."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import sgxemu
from sgxemu import Machine, uapi
from sgxemu.hw.faults import SgxUsageError
from sgxemu.linux import Machine as LinuxMachine
from sgxemu.linux.enclcall import EnclCaller
from sgxemu.linux.load import LoadedEnclave
from sgxemu.linux.process import Process
from sgxemu.testenclave import protocol as P


def test_machine_is_exported() -> None:
    assert sgxemu.Machine is LinuxMachine
    with pytest.raises(AttributeError):
        sgxemu.NoSuchThing  # noqa: B018


def test_threads_get_logical_processors(make_machine: Callable[..., Machine]) -> None:
    proc = make_machine(cpus=3).spawn()
    assert proc.main.lp == 0
    assert [proc.thread().lp for _ in range(4)] == [1, 2, 0, 1]
    assert proc.thread(lp=2).lp == 2
    with pytest.raises(SgxUsageError):
        proc.thread(lp=3)
    assert proc.cpumask == {0, 1, 2}


def test_counters(caller: EnclCaller, proc: Process, encl: LoadedEnclave) -> None:
    assert proc.syscalls["open"] == 1
    assert proc.ioctls[uapi.SGX_IOC_ENCLAVE_CREATE] == 1
    assert proc.ioctls[uapi.SGX_IOC_ENCLAVE_ADD_PAGES] == len(encl.image.segments)
    assert proc.ioctls[uapi.SGX_IOC_ENCLAVE_INIT] == 1
    faults = proc.page_faults
    caller.put_buf(P.MAGIC)
    assert proc.page_faults > faults  # the enclave's first touches fault its pages in
    m = proc.machine
    before = m.stats.etracks, m.stats.ipi_rounds
    off = encl.image.data_offset
    proc.ioctl(encl.fd, uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS,
               uapi.sgx_enclave_restrict_permissions(off, 2 * 4096, 3))
    assert (m.stats.etracks - before[0], m.stats.ipi_rounds - before[1]) == (2, 2)


def test_unknown_engine_fails_at_first_entry() -> None:
    m = Machine(epc_size=1 << 20, engine="no_such_engine", arena_size=1 << 28)
    with pytest.raises(ModuleNotFoundError):
        m.make_engine(m.cpu.lp(0), m.spawn().mm.mem)
    m.close()
    assert not m.processes
