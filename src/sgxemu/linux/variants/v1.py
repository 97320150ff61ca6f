"""V1 of the SGX2 series (Reinette Chatre, 1 Dec 2021, 25 patches, cover.1638381245).

One ioctl, SGX_IOC_PAGE_MODP, for every permission change: the kernel cannot see EMODPE, so it
treats relaxing as restricting (EMODPR + ETRACK, run bits, PTE zap) and the enclave must EACCEPT
the PR that EMODPR sets even when nothing was removed. SGX_IOC_PAGE_MODT changes types,
SGX_IOC_PAGE_REMOVE removes trimmed pages. Permission model: `runbits.RunBitsPolicy`.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ... import uapi
from ...uapi_variants import v1 as uapi_v1
from ..errors import KernelError
from ..ioctl import (
    SGX_IOCTLS_LINUX_6_0,
    Handler,
    UserArg,
    _run_and_copy_back,
    sgx_ioc_enclave_remove_pages,
    sgx_ioc_sgx2_ready,
    sgx_validate_offset_length,
)
from .runbits import RunBitsPolicy, sgx_runbits_modify_types, sgx_runbits_restrict

if TYPE_CHECKING:
    from ..encl import SgxEncl
    from ..machine import Machine
    from ..process import Thread

_PROT_MASK = uapi.SGX_SECINFO_PERMISSION_MASK  # PROT_READ|PROT_WRITE|PROT_EXEC, same values


# sgx_ioc_page_modp (V1 10/25); prot checks as V2's sgx_perm_from_user_secinfo [inferred]
def sgx_ioc_page_modp(m: Machine, encl: SgxEncl, t: Thread, arg: UserArg) -> int:
    sgx_ioc_sgx2_ready(m, encl)
    params = arg.copy_from(uapi_v1.sgx_page_modp)
    sgx_validate_offset_length(encl, params.offset, params.length)
    if params.prot & ~_PROT_MASK:
        raise KernelError(errno.EINVAL)
    if params.prot & uapi.SGX_SECINFO_W and not params.prot & uapi.SGX_SECINFO_R:
        raise KernelError(errno.EINVAL)
    if params.result or params.count:
        raise KernelError(errno.EINVAL)
    return _run_and_copy_back(arg, params, lambda: sgx_runbits_restrict(m, encl, params, params.prot))


# sgx_ioc_page_modt (V1 16/25)
def sgx_ioc_page_modt(m: Machine, encl: SgxEncl, t: Thread, arg: UserArg) -> int:
    sgx_ioc_sgx2_ready(m, encl)
    params = arg.copy_from(uapi_v1.sgx_page_modt)
    sgx_validate_offset_length(encl, params.offset, params.length)
    if params.type & ~uapi.SGX_PAGE_TYPE_MASK:
        raise KernelError(errno.EINVAL)
    if params.result or params.count:
        raise KernelError(errno.EINVAL)
    return _run_and_copy_back(
        arg, params, lambda: sgx_runbits_modify_types(m, encl, params, params.type)
    )


class V1(RunBitsPolicy):
    """SGX2 series V1 (Dec 2021): MODP/MODT/REMOVE, run bits, pfn_mkwrite, EAUG capped at RW."""

    name = "v1"
    ioctls: dict[int, Handler] = {
        **{k: v for k, v in SGX_IOCTLS_LINUX_6_0.items() if k & 0xFF <= 0x04},
        uapi_v1.SGX_IOC_PAGE_MODP: sgx_ioc_page_modp,
        uapi_v1.SGX_IOC_PAGE_MODT: sgx_ioc_page_modt,
        # sgx_ioc_page_remove (V1 17/25): the loop V2 renamed and the merged driver kept
        uapi_v1.SGX_IOC_PAGE_REMOVE: sgx_ioc_enclave_remove_pages,
    }

    def ioctl_handler(self, cmd: int) -> Handler | None:
        return self.ioctls.get(cmd)
