"""soft-restrict: the merged ABI, but restricting never reaches the EPCM (proposed, not merged).

The review asked whether the kernel should run EMODPR at all (e.g. Andy Lutomirski on V1 10/25:
the host cannot usefully track EPCM state, and ENCLS is needed only for the TLB flush). This
design answers "no": SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS (same number and struct as Linux 6.0)
only sets the kernel's record of the page's rights and zaps the PTEs; PTEs are then VMA ∩ record
and a write fault on a read-only PTE asks the record (the V1 pfn_mkwrite). No EMODPR, no
ETRACK, no IPI, nothing for the enclave to EACCEPT, and nothing the enclave can verify: the
EPCM keeps the old rights. The same ioctl raises the record again (up to vm_max_prot_bits).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ... import uapi
from ..errors import KernelError
from ..ioctl import (
    SGX_IOCTLS_LINUX_6_0,
    Handler,
    UserArg,
    _run_and_copy_back,
    sgx_ioc_sgx2_ready,
    sgx_validate_offset_length,
)
from .runbits import RunBitsPTEs, sgx_runbits_set

if TYPE_CHECKING:
    from ..encl import SgxEncl
    from ..machine import Machine
    from ..process import Thread


# sgx_ioc_enclave_restrict_permissions with the pre-checks of Linux 6.0 and no ENCLS
def sgx_ioc_enclave_soft_restrict(m: Machine, encl: SgxEncl, t: Thread, arg: UserArg) -> int:
    sgx_ioc_sgx2_ready(m, encl)
    params = arg.copy_from(uapi.sgx_enclave_restrict_permissions)
    sgx_validate_offset_length(encl, params.offset, params.length)
    if params.permissions & ~uapi.SGX_SECINFO_PERMISSION_MASK:
        raise KernelError(errno.EINVAL)
    if params.permissions & uapi.SGX_SECINFO_W and not params.permissions & uapi.SGX_SECINFO_R:
        raise KernelError(errno.EINVAL)
    if params.result or params.count:
        raise KernelError(errno.EINVAL)
    perm = params.permissions
    return _run_and_copy_back(arg, params, lambda: sgx_runbits_set(m, encl, params, perm))


class SoftRestrict(RunBitsPTEs):
    """Linux 6.0 with RESTRICT_PERMISSIONS as a kernel-record-only operation."""

    name = "soft-restrict"
    ioctls: dict[int, Handler] = {
        **SGX_IOCTLS_LINUX_6_0,
        uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS: sgx_ioc_enclave_soft_restrict,
    }

    def ioctl_handler(self, cmd: int) -> Handler | None:
        return self.ioctls.get(cmd)
