"""What a host process did on the emulated machine, as counted by the model itself.

With ``SGXEMU_STATS=DIR`` in the environment (``sgxemu exec --json`` sets it), every process
whose emulator started writes ``DIR/PID.json`` when it exits through ``exit()`` or a return from
``main`` (the preload library's destructor calls `Runtime.at_exit`). Nothing is written for a
process killed by a signal or ended by ``_exit``. A forked child starts with a copy of its
parent's counters, so the files of several processes must not be added up.

Every figure is a counter the model keeps anyway: system calls and ioctls of the emulated
process, ENCLS/ENCLU leaves counted by the processor (attempts: a leaf that faulted counts too),
the kernel model's `MachineStats`, user page faults.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import uapi
from ..arch.constants import EnclsLeaf, EncluLeaf

if TYPE_CHECKING:
    from ..linux.machine import Machine
    from ..linux.process import Process

STATS_ENV = "SGXEMU_STATS"

# The uapi of the 2021-22 series whose request numbers differ from the merged ones.
_VARIANT_UAPI = {"v1": "sgxemu.uapi_variants.v1", "v2": "sgxemu.uapi_variants.v2"}


def ioctl_names(kernel: str) -> dict[int, str]:
    """Request number -> uapi name, for the ABI of driver design `kernel`."""
    names = {
        getattr(uapi, n) & 0xFFFF_FFFF: n
        for n in dir(uapi)
        if n.startswith("SGX_IOC_") and isinstance(getattr(uapi, n), int)
    }
    module = _VARIANT_UAPI.get(kernel)
    if module is not None:
        # A series reused some merged numbers for other ioctls: its names win.
        names.update(importlib.import_module(module).IOCTL_NAMES)
    return names


def _leaves(counts: list[int], table: type[EnclsLeaf] | type[EncluLeaf]) -> dict[str, int]:
    return {table(i).name: n for i, n in enumerate(counts) if n and i in table._value2member_map_}


def counters(machine: Machine, proc: Process, kernel: str) -> dict[str, Any]:
    """The counters of one emulated process and its machine, as plain JSON values."""
    cpu = machine.cpu
    names = ioctl_names(kernel)
    return {
        "enclaves_created": cpu.encls_count[EnclsLeaf.ECREATE],
        "enclave_entries": cpu.enclu_count[EncluLeaf.EENTER] + cpu.enclu_count[EncluLeaf.ERESUME],
        "syscalls": dict(sorted(proc.syscalls.items())),
        "ioctls": {names.get(cmd, f"{cmd:#x}"): n for cmd, n in sorted(proc.ioctls.items())},
        "encls": _leaves(cpu.encls_count, EnclsLeaf),
        "enclu": _leaves(cpu.enclu_count, EncluLeaf),
        "page_faults": proc.page_faults,
        **asdict(machine.stats),
    }


def stats_file(directory: str | Path, pid: int) -> Path:
    return Path(directory) / f"{pid}.json"


def write_stats(directory: str | Path, pid: int, data: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a file."""
    path = stats_file(directory, pid)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def read_stats(directory: str | Path, pid: int) -> dict[str, Any] | None:
    """The counters process `pid` left in `directory`, or None if it wrote none."""
    try:
        data: dict[str, Any] = json.loads(stats_file(directory, pid).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data
