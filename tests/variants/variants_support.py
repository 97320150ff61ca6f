"""Shared helper type for the variant tests (a module with a unique name, not a conftest)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sgxemu import Machine
from sgxemu.linux.enclcall import EnclCaller
from sgxemu.linux.load import LoadedEnclave
from sgxemu.linux.process import Process
from sgxemu.loader.selftest_layout import EnclaveImage


@dataclass
class Built:
    """A machine of one kernel design with the selftest enclave built and mapped."""

    m: Machine
    proc: Process
    encl: LoadedEnclave
    c: EnclCaller
    image: EnclaveImage

    @property
    def D(self) -> int:  # the selftests' data page
        return self.encl.data_start

    @property
    def d_off(self) -> int:
        return self.image.data_offset + 4096

    @property
    def T(self) -> int:  # first ELRANGE offset with no page
        return self.image.src_size

    def ioctl(self, request: int, arg: object) -> int:
        return self.proc.ioctl(self.encl.fd, request, arg)

    def errno_of(self, request: int, arg: object) -> int:
        with pytest.raises(OSError) as info:
            self.ioctl(request, arg)
        assert info.value.errno is not None
        return info.value.errno

    def exc(self) -> tuple[int, int, int]:
        return self.c.exc()

    def encls(self, leaf: int) -> int:
        return self.m.cpu.encls_count[leaf]
