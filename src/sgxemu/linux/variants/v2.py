"""V2 of the SGX2 series (Reinette Chatre, 7 Feb 2022, 32 patches, cover.1644274683).

After Jarkko Sakkinen's review of V1 the permission ioctl was split: RELAX_PERMISSIONS only
updates the kernel's record (run bits) and zaps PTEs, with no ENCLS; RESTRICT_PERMISSIONS runs
EMODPR + ETRACK. Both, and MODIFY_TYPE, take a pointer to a SECINFO instead of a value.
Permission model: `runbits.RunBitsPolicy`. Jarkko Sakkinen NAKed RELAX (4 Mar 2022,
<YiHU7kHM6IqUJl8n@iki.fi>: it only adds a round trip after EMODPE); V3 dropped it with the run bits.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ... import uapi
from ...uapi_variants import v2 as uapi_v2
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
from .runbits import (
    RunBitsPolicy,
    sgx_perm_from_user_secinfo,
    sgx_runbits_modify_types,
    sgx_runbits_restrict,
    sgx_runbits_set,
)

if TYPE_CHECKING:
    from ..encl import SgxEncl
    from ..machine import Machine
    from ..process import Thread


# sgx_ioc_enclave_relax_perm (V2 15/32)
def sgx_ioc_enclave_relax_perm(m: Machine, encl: SgxEncl, t: Thread, arg: UserArg) -> int:
    sgx_ioc_sgx2_ready(m, encl)
    params = arg.copy_from(uapi_v2.sgx_enclave_relax_perm)
    sgx_validate_offset_length(encl, params.offset, params.length)
    perm = sgx_perm_from_user_secinfo(t, params.secinfo)
    if params.count:
        raise KernelError(errno.EINVAL)
    return _run_and_copy_back(arg, params, lambda: sgx_runbits_set(m, encl, params, perm))


# sgx_ioc_enclave_restrict_perm (V2 14/32)
def sgx_ioc_enclave_restrict_perm(m: Machine, encl: SgxEncl, t: Thread, arg: UserArg) -> int:
    sgx_ioc_sgx2_ready(m, encl)
    params = arg.copy_from(uapi_v2.sgx_enclave_restrict_perm)
    sgx_validate_offset_length(encl, params.offset, params.length)
    perm = sgx_perm_from_user_secinfo(t, params.secinfo)
    if params.result or params.count:
        raise KernelError(errno.EINVAL)
    return _run_and_copy_back(arg, params, lambda: sgx_runbits_restrict(m, encl, params, perm))


# sgx_ioc_enclave_modt (V2 22/32): the type comes in the SECINFO's type field
def sgx_ioc_enclave_modt(m: Machine, encl: SgxEncl, t: Thread, arg: UserArg) -> int:
    sgx_ioc_sgx2_ready(m, encl)
    params = arg.copy_from(uapi_v2.sgx_enclave_modt)
    sgx_validate_offset_length(encl, params.offset, params.length)
    raw = t.copy_from_user(params.secinfo, 64)
    flags = int.from_bytes(raw[:8], "little")
    if flags & ~uapi.SGX_SECINFO_PAGE_TYPE_MASK:
        raise KernelError(errno.EINVAL)
    if any(raw[8:]):
        raise KernelError(errno.EINVAL)
    if params.result or params.count:
        raise KernelError(errno.EINVAL)
    page_type = (flags & uapi.SGX_SECINFO_PAGE_TYPE_MASK) >> 8
    return _run_and_copy_back(
        arg, params, lambda: sgx_runbits_modify_types(m, encl, params, page_type)
    )


class V2(RunBitsPolicy):
    """SGX2 series V2 (Feb 2022): RELAX (no ENCLS) and RESTRICT (EMODPR), SECINFO pointers."""

    name = "v2"
    ioctls: dict[int, Handler] = {
        **{k: v for k, v in SGX_IOCTLS_LINUX_6_0.items() if k & 0xFF <= 0x04},
        uapi_v2.SGX_IOC_ENCLAVE_RELAX_PERMISSIONS: sgx_ioc_enclave_relax_perm,
        uapi_v2.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS: sgx_ioc_enclave_restrict_perm,
        uapi_v2.SGX_IOC_ENCLAVE_MODIFY_TYPE: sgx_ioc_enclave_modt,
        # sgx_ioc_enclave_remove_pages (V2 23/32): the loop the merged driver kept, at 0x08
        uapi_v2.SGX_IOC_ENCLAVE_REMOVE_PAGES: sgx_ioc_enclave_remove_pages,
    }

    def ioctl_handler(self, cmd: int) -> Handler | None:
        return self.ioctls.get(cmd)
