"""/dev/sgx_enclave and /dev/sgx_provision (driver.c, main.c): open, release, mmap, ioctl.

The enclave device exists only with flexible launch control (sgx_drv_init); the provision
device always does. The reserved-bit masks INIT checks come from CPUID leaf 12H at init.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from .. import uapi
from .encl import (
    SGX_ENCL_IOCTL,
    SgxEncl,
    SgxVmOps,
    kref_put,
    sgx_encl_mm_add,
    sgx_encl_mm_drop,
)
from .errors import ENOIOCTLCMD, KernelError
from .file import OpenFile
from .ioctl import UserArg
from .mman import MAP_FIXED, MAP_PRIVATE, MAP_TYPE
from .vma import VM_DONTDUMP, VM_DONTEXPAND, VM_IO, VM_PFNMAP, Vma

if TYPE_CHECKING:
    from .machine import Machine
    from .process import Thread

U64 = (1 << 64) - 1


class SgxEnclaveFops:
    """sgx_encl_fops (driver.c)."""

    name = "sgx_enclave"

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.vm_ops = SgxVmOps(m)

    # sgx_open (driver.c)
    def open(self, file: OpenFile, thread: Thread) -> None:
        file.private_data = SgxEncl()

    # sgx_release (driver.c)
    def release(self, file: OpenFile) -> None:
        encl: SgxEncl = file.private_data
        while encl.mm_list:  # mms that closed the file but have not exited
            sgx_encl_mm_drop(self.m, encl, encl.mm_list[0].mm)
        kref_put(self.m, encl)

    # sgx_mmap (driver.c)
    def mmap(self, file: OpenFile, vma: Vma, thread: Thread) -> None:
        encl: SgxEncl = file.private_data
        self.m.policy.may_map(encl, vma.start, vma.end, vma.flags, thread.process.personality)
        sgx_encl_mm_add(encl, thread.process)
        vma.ops = self.vm_ops
        vma.flags |= VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP | VM_IO
        vma.private = encl

    # sgx_get_unmapped_area (driver.c)
    def get_unmapped_area(
        self, file: OpenFile, thread: Thread, addr: int, length: int, pgoff: int, flags: int
    ) -> int:
        if flags & MAP_TYPE == MAP_PRIVATE:
            raise KernelError(errno.EINVAL)
        if flags & MAP_FIXED:
            return addr
        return thread.process.mm.get_unmapped_area(addr, length)

    # sgx_ioctl (ioctl.c)
    def ioctl(self, file: OpenFile, thread: Thread, cmd: int, arg: Any) -> int:
        encl: SgxEncl = file.private_data
        if encl.flags & SGX_ENCL_IOCTL:
            raise KernelError(errno.EBUSY)
        encl.flags |= SGX_ENCL_IOCTL
        try:
            handler = self.m.policy.ioctl_handler(cmd)
            if handler is None:
                raise KernelError(ENOIOCTLCMD)
            return handler(self.m, encl, thread, UserArg(thread, arg))
        finally:
            encl.flags &= ~SGX_ENCL_IOCTL


class SgxProvisionFops:
    """sgx_provision_fops (main.c): no operations at all; only its identity matters."""

    name = "sgx_provision"
    can_mmap = False  # no .mmap: do_mmap says ENODEV

    def open(self, file: OpenFile, thread: Thread) -> None:
        pass

    def release(self, file: OpenFile) -> None:
        pass

    def mmap(self, file: OpenFile, vma: Vma, thread: Thread) -> None:
        raise KernelError(errno.ENODEV)

    def get_unmapped_area(
        self, file: OpenFile, thread: Thread, addr: int, length: int, pgoff: int, flags: int
    ) -> int:
        if flags & MAP_FIXED:
            return addr
        return thread.process.mm.get_unmapped_area(addr, length)

    def ioctl(self, file: OpenFile, thread: Thread, cmd: int, arg: Any) -> int:
        raise KernelError(errno.ENOTTY)  # no .unlocked_ioctl


class SgxDriver:
    """The device nodes and the masks sgx_drv_init computes."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.enclave_fops = SgxEnclaveFops(m)
        self.provision_fops = SgxProvisionFops()
        self.devices: dict[str, Any] = {"/dev/sgx_provision": self.provision_fops}
        cpu = m.cpu
        eax, ebx, _, _ = cpu.cpuid(0x12, 0)
        # sgx_drv_init (driver.c): no FLC or no SGX1 -> no /dev/sgx_enclave
        if cpu.flc and eax & 1:
            self.devices["/dev/sgx_enclave"] = self.enclave_fops
        self.sgx_misc_reserved_mask = (~ebx | uapi.SGX_MISC_RESERVED_MASK) & 0xFFFF_FFFF
        eax, ebx, ecx, edx = cpu.cpuid(0x12, 1)
        attr_mask = (ebx << 32) + eax
        self.sgx_attributes_reserved_mask = (~attr_mask | uapi.SGX_ATTR_RESERVED_MASK) & U64
        self.sgx_xfrm_reserved_mask = ~((edx << 32) + ecx) & U64  # OSXSAVE is assumed
