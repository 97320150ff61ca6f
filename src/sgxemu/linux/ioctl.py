"""The /dev/sgx_enclave ioctls (ioctl.c), every check in the kernel's order.

Handlers raise `KernelError`; where the kernel copies the struct back before failing (the page
loops), the struct is written back first, so partial progress (`count`, `result`) is visible
to the caller even though the call fails.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .. import uapi
from ..arch.constants import (
    IA32_SGXLEPUBKEYHASH0,
    PAGE_SHIFT,
    PAGE_SIZE,
    PageType,
    SgxError,
)
from .encl import (
    SGX_ENCL_CREATED,
    SGX_ENCL_DEBUG,
    SGX_ENCL_INITIALIZED,
    SgxBacking,
    SgxEncl,
    SgxEnclPage,
    sgx_encl_cpumask,
    sgx_encl_free_epc_page,
    sgx_encl_grow,
    sgx_encl_load_page,
    sgx_encl_page_alloc,
    sgx_encl_shrink,
    sgx_zap_enclave_ptes,
)
from .encls import X86_TRAP_PF, encls_failed, encls_faulted, encls_trapnr
from .errors import ERESTARTSYS, KernelError
from .reclaim import sgx_reclaim_direct
from .vma import VM_MAYEXEC, VM_READ, VM_WRITE

if TYPE_CHECKING:
    from .machine import Machine
    from .process import Thread

_S = TypeVar("_S", bound=ctypes.Structure)

SGX_EINIT_SPIN_COUNT = 20
SGX_EINIT_SLEEP_COUNT = 50
MAX_LFS_FILESIZE = (1 << 63) - 1
U64 = (1 << 64) - 1


class UserArg:
    """The ioctl argument: a uapi ctypes struct (updated in place) or a user address."""

    def __init__(self, thread: Thread, arg: Any) -> None:
        self.thread = thread
        self.arg = arg

    def copy_from(self, cls: type[_S]) -> _S:
        size = ctypes.sizeof(cls)
        if isinstance(self.arg, ctypes.Structure):
            if ctypes.sizeof(self.arg) < size:
                raise KernelError(errno.EFAULT)
            return cls.from_buffer_copy(bytes(self.arg)[:size])
        return cls.from_buffer_copy(self.thread.copy_from_user(int(self.arg or 0), size))

    def copy_to(self, obj: ctypes.Structure) -> None:
        data = bytes(obj)
        if isinstance(self.arg, ctypes.Structure):
            if ctypes.sizeof(self.arg) < len(data):
                raise KernelError(errno.EFAULT)
            ctypes.memmove(ctypes.addressof(self.arg), data, len(data))
            return
        self.thread.copy_to_user(int(self.arg or 0), data)


Handler = Callable[["Machine", SgxEncl, "Thread", UserArg], int]


def is_power_of_2(n: int) -> bool:
    return n != 0 and n & (n - 1) == 0


# -- CREATE ---------------------------------------------------------------------------------------
# sgx_encl_create (ioctl.c)
def sgx_encl_create(m: Machine, encl: SgxEncl, secs: bytes, current: Thread) -> None:
    size, base = struct.unpack_from("<QQ", secs, 0)
    attributes = struct.unpack_from("<Q", secs, 48)[0]
    if not is_power_of_2(size):
        raise KernelError(errno.EINVAL)  # also keeps encl_size below from overflowing
    va_page = sgx_encl_grow(m, encl, True, current)
    if va_page is not None:
        encl.va_pages.insert(0, va_page)
    encl_size = (size + PAGE_SIZE) & U64  # the extra page goes to the SECS
    backing_size = (encl_size + (encl_size >> 5)) & U64
    if backing_size > MAX_LFS_FILESIZE:  # shmem_file_setup refuses a negative loff_t
        sgx_encl_shrink(m, encl, va_page)
        raise KernelError(errno.EINVAL)
    encl.backing = SgxBacking(backing_size)
    try:
        secs_epc = m.epc.alloc(encl.secs, True, current)
    except KernelError:
        encl.backing = None
        sgx_encl_shrink(m, encl, va_page)
        raise
    encl.secs.epc_page = secs_epc
    if m.encls.ecreate(secs, 0, secs_epc.pa):
        sgx_encl_free_epc_page(m, secs_epc)
        encl.secs.epc_page = None
        encl.backing = None
        sgx_encl_shrink(m, encl, va_page)
        raise KernelError(errno.EIO)
    if attributes & uapi.SGX_ATTR_DEBUG:
        encl.flags |= SGX_ENCL_DEBUG
    encl.secs.type = int(PageType.PT_SECS)
    encl.base = base
    encl.size = size
    encl.attributes = attributes
    encl.attributes_mask = uapi.SGX_ATTR_UNPRIV_MASK
    encl.flags |= SGX_ENCL_CREATED


# sgx_ioc_enclave_create (ioctl.c)
def sgx_ioc_enclave_create(m: Machine, encl: SgxEncl, t: Thread, arg: UserArg) -> int:
    if encl.test(SGX_ENCL_CREATED):
        raise KernelError(errno.EINVAL)
    params = arg.copy_from(uapi.sgx_enclave_create)
    secs = t.copy_from_user(params.src, PAGE_SIZE)
    sgx_encl_create(m, encl, secs, t)
    return 0


# -- ADD_PAGES ------------------------------------------------------------------------------------
# sgx_validate_secinfo (ioctl.c)
def sgx_validate_secinfo(raw: bytes) -> None:
    flags = struct.unpack_from("<Q", raw, 0)[0]
    perm = flags & uapi.SGX_SECINFO_PERMISSION_MASK
    pt = flags & uapi.SGX_SECINFO_PAGE_TYPE_MASK
    if pt not in (uapi.SGX_SECINFO_REG, uapi.SGX_SECINFO_TCS):
        raise KernelError(errno.EINVAL)
    if perm & uapi.SGX_SECINFO_W and not perm & uapi.SGX_SECINFO_R:
        raise KernelError(errno.EINVAL)
    if pt == uapi.SGX_SECINFO_TCS and perm:
        raise KernelError(errno.EINVAL)  # the CPU would silently zero them: refuse instead
    if flags & uapi.SGX_SECINFO_RESERVED_MASK:
        raise KernelError(errno.EINVAL)
    if any(raw[8:64]):
        raise KernelError(errno.EINVAL)


# sgx_validate_offset_length (ioctl.c)
def sgx_validate_offset_length(encl: SgxEncl, offset: int, length: int) -> None:
    if offset & (PAGE_SIZE - 1):
        raise KernelError(errno.EINVAL)
    if not length or length & (PAGE_SIZE - 1):
        raise KernelError(errno.EINVAL)
    if offset + length > U64:
        raise KernelError(errno.EINVAL)
    if ((offset + length - PAGE_SIZE) & U64) >= encl.size:
        raise KernelError(errno.EINVAL)


# __sgx_encl_add_page (ioctl.c)
def __sgx_encl_add_page(
    m: Machine, encl: SgxEncl, encl_page: SgxEnclPage, epc_pa: int, secinfo: bytes, src: int,
    t: Thread,
) -> None:
    vma = t.process.mm.find_vma(src)
    if vma is None:
        raise KernelError(errno.EFAULT)
    if not vma.flags & VM_MAYEXEC:
        raise KernelError(errno.EACCES)  # noexec mount
    contents = t.get_user_pages(src)
    assert encl.secs.epc_page is not None
    if m.encls.eadd(encl_page.addr, contents, secinfo, encl.secs.epc_page.pa, epc_pa):
        raise KernelError(errno.EIO)


# __sgx_encl_extend (ioctl.c)
def __sgx_encl_extend(m: Machine, encl: SgxEncl, epc_pa: int) -> None:
    assert encl.secs.epc_page is not None
    ret = m.encls.eextend_page(encl.secs.epc_page.pa, epc_pa)  # 16 EEXTENDs, in order
    if ret:
        if encls_failed(ret):
            m.encls.warn(ret, "EEXTEND")
        raise KernelError(errno.EIO)


# sgx_encl_add_page (ioctl.c)
def sgx_encl_add_page(
    m: Machine, encl: SgxEncl, src: int, offset: int, secinfo: bytes, flags: int, t: Thread
) -> None:
    secinfo_flags = struct.unpack_from("<Q", secinfo, 0)[0]
    encl_page = sgx_encl_page_alloc(encl, offset, secinfo_flags)
    epc_page = m.epc.alloc(encl_page, True, t)
    try:
        va_page = sgx_encl_grow(m, encl, True, t)
    except KernelError:
        sgx_encl_free_epc_page(m, epc_page)
        raise
    if va_page is not None:
        encl.va_pages.insert(0, va_page)
    key = encl_page.desc >> PAGE_SHIFT
    if key in encl.page_array:  # xa_insert: the offset already holds a page
        sgx_encl_shrink(m, encl, va_page)
        sgx_encl_free_epc_page(m, epc_page)
        raise KernelError(errno.EBUSY)
    encl.page_array[key] = encl_page  # inserted before EADD, which cannot be unwound
    try:
        __sgx_encl_add_page(m, encl, encl_page, epc_page.pa, secinfo, src, t)
        encl_page.epc_page = epc_page
        encl_page.type = (secinfo_flags & uapi.SGX_SECINFO_PAGE_TYPE_MASK) >> 8
        encl.secs_child_cnt += 1
        if flags & uapi.SGX_PAGE_MEASURE:
            __sgx_encl_extend(m, encl, epc_page.pa)
    except KernelError:
        del encl.page_array[key]
        encl_page.epc_page = None
        sgx_encl_shrink(m, encl, va_page)
        sgx_encl_free_epc_page(m, epc_page)
        raise
    m.epc.mark_reclaimable(epc_page)


# sgx_ioc_enclave_add_pages (ioctl.c)
def sgx_ioc_enclave_add_pages(m: Machine, encl: SgxEncl, t: Thread, arg: UserArg) -> int:
    if not encl.test(SGX_ENCL_CREATED) or encl.test(SGX_ENCL_INITIALIZED):
        raise KernelError(errno.EINVAL)
    params = arg.copy_from(uapi.sgx_enclave_add_pages)
    if params.src & (PAGE_SIZE - 1):
        raise KernelError(errno.EINVAL)
    sgx_validate_offset_length(encl, params.offset, params.length)
    secinfo = t.copy_from_user(params.secinfo, 64)
    sgx_validate_secinfo(secinfo)
    ret = 0
    c = 0
    while c < params.length:
        if t.signal_pending:
            if not c:
                ret = ERESTARTSYS
            break  # a later signal returns what was done
        m.cond_resched(t)
        try:
            sgx_encl_add_page(
                m, encl, (params.src + c) & U64, params.offset + c, secinfo, params.flags, t
            )
        except KernelError as e:
            ret = e.errno
            break
        c += PAGE_SIZE
    params.count = c
    arg.copy_to(params)
    if ret:
        raise KernelError(ret)
    return 0


# -- INIT -----------------------------------------------------------------------------------------
_BODY = 900


# sgx_encl_init (ioctl.c)
def sgx_encl_init(m: Machine, encl: SgxEncl, sigstruct: bytes, token: bytes, t: Thread) -> None:
    if encl.attributes & ~encl.attributes_mask & U64:
        raise KernelError(errno.EACCES)  # e.g. PROVISIONKEY without /dev/sgx_provision
    miscselect, misc_mask = struct.unpack_from("<II", sigstruct, _BODY)
    attributes, xfrm, attributes_mask, xfrm_mask = struct.unpack_from("<4Q", sigstruct, _BODY + 28)
    d = m.driver
    if attributes & attributes_mask & d.sgx_attributes_reserved_mask:
        raise KernelError(errno.EINVAL)
    if miscselect & misc_mask & d.sgx_misc_reserved_mask:
        raise KernelError(errno.EINVAL)
    if xfrm & xfrm_mask & d.sgx_xfrm_reserved_mask:
        raise KernelError(errno.EINVAL)
    mrsigner = hashlib.sha256(sigstruct[128 : 128 + uapi.SGX_MODULUS_SIZE]).digest()
    ret = 0
    for _ in range(SGX_EINIT_SLEEP_COUNT):
        for _ in range(SGX_EINIT_SPIN_COUNT):
            assert encl.secs.epc_page is not None
            # sgx_update_lepubkeyhash (main.c): before every attempt, with preemption off
            for i in range(4):
                m.cpu.wrmsr(IA32_SGXLEPUBKEYHASH0 + i, int.from_bytes(mrsigner[8 * i : 8 * i + 8], "little"))
            ret = m.encls.einit(sigstruct, token, encl.secs.epc_page.pa)
            if ret != SgxError.SGX_UNMASKED_EVENT:
                break
        if ret != SgxError.SGX_UNMASKED_EVENT:
            break
        # msleep_interruptible(SGX_EINIT_SLEEP_TIME): time is not modelled, signals are
        if t.signal_pending:
            raise KernelError(ERESTARTSYS)
    if encls_faulted(ret):
        if encls_failed(ret):
            m.encls.warn(ret, "EINIT")
        raise KernelError(errno.EIO)
    if ret:
        m.last_einit_error = ret
        raise KernelError(errno.EPERM)
    encl.flags |= SGX_ENCL_INITIALIZED


# sgx_ioc_enclave_init (ioctl.c)
def sgx_ioc_enclave_init(m: Machine, encl: SgxEncl, t: Thread, arg: UserArg) -> int:
    if not encl.test(SGX_ENCL_CREATED) or encl.test(SGX_ENCL_INITIALIZED):
        raise KernelError(errno.EINVAL)
    params = arg.copy_from(uapi.sgx_enclave_init)
    token = bytes(uapi.SGX_LAUNCH_TOKEN_SIZE)
    sigstruct = t.copy_from_user(params.sigstruct, ctypes.sizeof(uapi.sgx_sigstruct))
    vendor = struct.unpack_from("<I", sigstruct, 16)[0]
    if vendor not in (0x0000, 0x8086):
        raise KernelError(errno.EINVAL)
    sgx_encl_init(m, encl, sigstruct, token, t)
    return 0


# -- PROVISION ------------------------------------------------------------------------------------
# sgx_ioc_enclave_provision (ioctl.c) and sgx_set_attribute (main.c)
def sgx_ioc_enclave_provision(m: Machine, encl: SgxEncl, t: Thread, arg: UserArg) -> int:
    params = arg.copy_from(uapi.sgx_enclave_provision)
    file = t.process.fds.get(params.fd & 0xFFFF_FFFF)  # passed on as unsigned int
    if file is None or file.f_op is not m.driver.provision_fops:
        raise KernelError(errno.EINVAL)
    encl.attributes_mask |= uapi.SGX_ATTR_PROVISIONKEY
    return 0


# -- SGX2 -----------------------------------------------------------------------------------------
# sgx_ioc_sgx2_ready (ioctl.c)
def sgx_ioc_sgx2_ready(m: Machine, encl: SgxEncl) -> None:
    if not m.cpu.sgx2:
        raise KernelError(errno.ENODEV)
    if not encl.test(SGX_ENCL_INITIALIZED):
        raise KernelError(errno.EINVAL)


# sgx_enclave_etrack (ioctl.c)
def sgx_enclave_etrack(m: Machine, encl: SgxEncl) -> None:
    assert encl.secs.epc_page is not None
    epc = encl.secs.epc_page.pa
    ret = m.etrack(epc)
    if ret:
        # Only an OS issue (two ETRACKs without a completed IPI round) gets here.
        m.encls.warn(ret, "ETRACK")
        m.on_each_cpu_mask(sgx_encl_cpumask(encl))
        ret = m.etrack(epc)
        if ret:
            m.encls.warn(ret, "ETRACK repeat")
            raise KernelError(errno.EFAULT)
    m.on_each_cpu_mask(sgx_encl_cpumask(encl))


def _load(m: Machine, encl: SgxEncl, addr: int) -> SgxEnclPage:
    """sgx_encl_load_page as the SGX2 ioctls use it: EBUSY -> EAGAIN, anything else EFAULT."""
    try:
        return sgx_encl_load_page(m, encl, addr)
    except KernelError as e:
        raise KernelError(errno.EAGAIN if e.errno == errno.EBUSY else errno.EFAULT) from None


# sgx_enclave_restrict_permissions (ioctl.c)
def sgx_enclave_restrict_permissions(
    m: Machine, encl: SgxEncl, modp: uapi.sgx_enclave_restrict_permissions
) -> None:
    secinfo_flags = modp.permissions & uapi.SGX_SECINFO_PERMISSION_MASK
    c = 0
    try:
        while c < modp.length:
            addr = encl.base + modp.offset + c
            sgx_reclaim_direct(m)
            entry = _load(m, encl, addr)
            if entry.type != PageType.PT_REG:
                raise KernelError(errno.EINVAL)  # EMODPR would #PF on anything else
            assert entry.epc_page is not None
            ret = m.encls.emodpr(secinfo_flags, entry.epc_page.pa)
            if encls_faulted(ret):
                m.encls.warn(ret, "EMODPR")
                raise KernelError(errno.EFAULT)
            if encls_failed(ret):
                modp.result = ret
                raise KernelError(errno.EFAULT)
            sgx_enclave_etrack(m, encl)
            c += PAGE_SIZE
    finally:
        modp.count = c


# sgx_ioc_enclave_restrict_permissions (ioctl.c)
def sgx_ioc_enclave_restrict_permissions(
    m: Machine, encl: SgxEncl, t: Thread, arg: UserArg
) -> int:
    sgx_ioc_sgx2_ready(m, encl)
    params = arg.copy_from(uapi.sgx_enclave_restrict_permissions)
    sgx_validate_offset_length(encl, params.offset, params.length)
    if params.permissions & ~uapi.SGX_SECINFO_PERMISSION_MASK:
        raise KernelError(errno.EINVAL)
    if params.permissions & uapi.SGX_SECINFO_W and not params.permissions & uapi.SGX_SECINFO_R:
        raise KernelError(errno.EINVAL)  # fail before EMODPR would #GP on it
    if params.result or params.count:
        raise KernelError(errno.EINVAL)
    return _run_and_copy_back(arg, params, lambda: sgx_enclave_restrict_permissions(m, encl, params))


# sgx_enclave_modify_types (ioctl.c)
def sgx_enclave_modify_types(m: Machine, encl: SgxEncl, modt: uapi.sgx_enclave_modify_types) -> None:
    page_type = modt.page_type & uapi.SGX_PAGE_TYPE_MASK
    if page_type not in (uapi.SGX_PAGE_TYPE_TCS, uapi.SGX_PAGE_TYPE_TRIM):
        raise KernelError(errno.EINVAL)
    c = 0
    try:
        while c < modt.length:
            addr = encl.base + modt.offset + c
            sgx_reclaim_direct(m)
            entry = _load(m, encl, addr)
            if not (
                entry.type == PageType.PT_REG
                or (entry.type == PageType.PT_TCS and page_type == uapi.SGX_PAGE_TYPE_TRIM)
            ):
                raise KernelError(errno.EINVAL)
            max_prot_restore = entry.vm_max_prot_bits
            assert entry.epc_page is not None
            try:
                if entry.type == PageType.PT_REG and page_type == uapi.SGX_PAGE_TYPE_TCS:
                    if ~entry.vm_max_prot_bits & (VM_READ | VM_WRITE):
                        raise KernelError(errno.EPERM)
                    entry.vm_max_prot_bits = VM_READ | VM_WRITE  # a TCS is RW to the kernel
                    if m.epc.unmark_reclaimable(entry.epc_page):
                        raise KernelError(errno.EAGAIN)
                    sgx_zap_enclave_ptes(m, encl, addr)
                    m.epc.mark_reclaimable(entry.epc_page)
                ret = m.encls.emodt(page_type << 8, entry.epc_page.pa)
                if encls_faulted(ret):
                    m.encls.warn(ret, "EMODT")
                    raise KernelError(errno.EFAULT)
                if encls_failed(ret):
                    modt.result = ret
                    raise KernelError(errno.EFAULT)
            except KernelError:
                entry.vm_max_prot_bits = max_prot_restore
                raise
            sgx_enclave_etrack(m, encl)  # its failure keeps the new vm_max_prot_bits
            entry.type = page_type
            c += PAGE_SIZE
    finally:
        modt.count = c


# sgx_ioc_enclave_modify_types (ioctl.c)
def sgx_ioc_enclave_modify_types(m: Machine, encl: SgxEncl, t: Thread, arg: UserArg) -> int:
    sgx_ioc_sgx2_ready(m, encl)
    params = arg.copy_from(uapi.sgx_enclave_modify_types)
    sgx_validate_offset_length(encl, params.offset, params.length)
    if params.page_type & ~uapi.SGX_PAGE_TYPE_MASK:
        raise KernelError(errno.EINVAL)
    if params.result or params.count:
        raise KernelError(errno.EINVAL)
    return _run_and_copy_back(arg, params, lambda: sgx_enclave_modify_types(m, encl, params))


# sgx_encl_remove_pages (ioctl.c)
def sgx_encl_remove_pages(m: Machine, encl: SgxEncl, params: uapi.sgx_enclave_remove_pages) -> None:
    rwx = uapi.SGX_SECINFO_R | uapi.SGX_SECINFO_W | uapi.SGX_SECINFO_X
    c = 0
    try:
        while c < params.length:
            addr = encl.base + params.offset + c
            sgx_reclaim_direct(m)
            entry = _load(m, encl, addr)
            if entry.type != PageType.PT_TRIM:
                raise KernelError(errno.EPERM)
            assert entry.epc_page is not None
            # EMODPR as a probe: NOT_MODIFIABLE before EACCEPT, #PF after it.
            ret = m.encls.emodpr(rwx, entry.epc_page.pa)
            if not encls_faulted(ret) or encls_trapnr(ret) != X86_TRAP_PF:
                raise KernelError(errno.EPERM)
            if m.epc.unmark_reclaimable(entry.epc_page):
                raise KernelError(errno.EBUSY)
            sgx_zap_enclave_ptes(m, encl, addr)
            sgx_encl_free_epc_page(m, entry.epc_page)
            encl.secs_child_cnt -= 1
            entry.epc_page = None
            del encl.page_array[entry.desc >> PAGE_SHIFT]
            sgx_encl_shrink(m, encl, None)  # VA pages stay (kernel-doc)
            c += PAGE_SIZE
    finally:
        params.count = c


# sgx_ioc_enclave_remove_pages (ioctl.c)
def sgx_ioc_enclave_remove_pages(m: Machine, encl: SgxEncl, t: Thread, arg: UserArg) -> int:
    sgx_ioc_sgx2_ready(m, encl)
    params = arg.copy_from(uapi.sgx_enclave_remove_pages)
    sgx_validate_offset_length(encl, params.offset, params.length)
    if params.count:
        raise KernelError(errno.EINVAL)
    return _run_and_copy_back(arg, params, lambda: sgx_encl_remove_pages(m, encl, params))


def _run_and_copy_back(arg: UserArg, params: ctypes.Structure, body: Callable[[], None]) -> int:
    """Run a page loop; the struct goes back to the user on success and on failure alike."""
    try:
        body()
    except KernelError as e:
        arg.copy_to(params)
        raise KernelError(e.errno) from None
    arg.copy_to(params)
    return 0


# The ioctls of Linux >= 6.0 (sgx_ioctl's switch); a policy may offer another table.
SGX_IOCTLS_LINUX_6_0: dict[int, Handler] = {
    uapi.SGX_IOC_ENCLAVE_CREATE: sgx_ioc_enclave_create,
    uapi.SGX_IOC_ENCLAVE_ADD_PAGES: sgx_ioc_enclave_add_pages,
    uapi.SGX_IOC_ENCLAVE_INIT: sgx_ioc_enclave_init,
    uapi.SGX_IOC_ENCLAVE_PROVISION: sgx_ioc_enclave_provision,
    uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS: sgx_ioc_enclave_restrict_permissions,
    uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES: sgx_ioc_enclave_modify_types,
    uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES: sgx_ioc_enclave_remove_pages,
}
