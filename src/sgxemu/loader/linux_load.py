"""Create an enclave from an `EnclavePlan` (SDK or SGXS) through the Linux SGX ABI.

What a loader process does with /dev/sgx_enclave (ioctl.c): reserve a naturally aligned
ELRANGE, SGX_IOC_ENCLAVE_CREATE, one SGX_IOC_ENCLAVE_ADD_PAGES per page with that page's
SECINFO and SGX_PAGE_MEASURE when it is measured, SGX_IOC_ENCLAVE_PROVISION when the
enclave asks for PROVISIONKEY, then SGX_IOC_ENCLAVE_INIT with the enclave's own SIGSTRUCT.
With FLC the driver writes IA32_SGXLEPUBKEYHASH := MRSIGNER before EINIT (main.c).
A failing system call raises its OSError (INIT: EPERM when EINIT refuses, the SGX error code
is then in `Machine.last_einit_error`); everything opened or mapped here is released first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sgxemu import uapi
from sgxemu.arch.constants import PAGE_SIZE
from sgxemu.arch.structs import Sigstruct
from sgxemu.linux.load import encl_map_area
from sgxemu.linux.process import Process
from sgxemu.loader.errors import PartialMeasurementError, UnsignedEnclaveError
from sgxemu.loader.plan import EnclavePlan
from sgxemu.loader.sdk import SdkEnclave
from sgxemu.loader.sgxs import SgxsEnclave

__all__ = ["LinuxEnclave", "check_loadable", "load_plan", "load_sdk", "load_sgxs", "secs_choice"]


@dataclass
class LinuxEnclave:
    """An initialized enclave: its fd, ELRANGE (reserved PROT_NONE, not mapped) and SECS choice."""

    proc: Process
    fd: int
    base: int
    size: int
    plan: EnclavePlan
    sigstruct: bytes
    attributes: int
    xfrm: int
    miscselect: int

    def delete(self) -> None:
        self.proc.munmap(self.base, self.size)
        self.proc.close(self.fd)


def check_loadable(plan: EnclavePlan) -> None:
    """PartialMeasurementError unless every page is measured fully (chunks 0..15) or not at all."""
    for page in plan.pages:
        if page.chunks and not page.fully_measured:
            raise PartialMeasurementError(
                f"cannot load through the Linux ABI: page {page.offset:#x} EEXTENDs chunks "
                f"{list(page.chunks)}; SGX_IOC_ENCLAVE_ADD_PAGES measures all 16 chunks in order or none"
            )


def secs_choice(sigstruct: bytes) -> tuple[int, int, int]:
    """(ATTRIBUTES, XFRM, MISCSELECT) for the SECS: the SIGSTRUCT's own values, which satisfy its
    masks by construction (EINIT compares SECS & mask with SIGSTRUCT & mask). INIT is EINIT's."""
    st = Sigstruct.unpack(sigstruct)
    return st.attributes & ~uapi.SGX_ATTR_INIT, st.xfrm, st.miscselect


def load_plan(
    proc: Process,
    plan: EnclavePlan,
    sigstruct: bytes,
    *,
    attributes: int | None = None,
    xfrm: int | None = None,
    miscselect: int | None = None,
) -> LinuxEnclave:
    """CREATE, ADD_PAGES page by page, (PROVISION), INIT; OSError from the failing call."""
    check_loadable(plan)
    attr0, xfrm0, misc0 = secs_choice(sigstruct)
    attributes = attr0 if attributes is None else attributes
    xfrm = xfrm0 if xfrm is None else xfrm
    miscselect = misc0 if miscselect is None else miscselect
    size = plan.size
    cleanup: list[tuple[int, int]] = []
    fd = proc.open("/dev/sgx_enclave", os.O_RDWR)
    try:
        base = encl_map_area(proc, size)  # a naturally aligned ELRANGE, as load.c reserves it
        cleanup.append((base, size))
        args = proc.alloc(3 * PAGE_SIZE)  # SECS, SECINFO, SIGSTRUCT
        cleanup.append((args, 3 * PAGE_SIZE))
        src = proc.alloc(PAGE_SIZE)
        cleanup.append((src, PAGE_SIZE))
        secs = uapi.sgx_secs()
        secs.size = size
        secs.base = base
        secs.ssa_frame_size = plan.ssaframesize
        secs.miscselect = miscselect
        secs.attributes = attributes
        secs.xfrm = xfrm
        proc.write(args, secs)
        proc.ioctl(fd, uapi.SGX_IOC_ENCLAVE_CREATE, uapi.sgx_enclave_create(src=args))
        secinfo = args + PAGE_SIZE
        last_flags, last_data = -1, b""
        for page in plan.pages:
            if page.secinfo_flags != last_flags:
                proc.write(secinfo, uapi.sgx_secinfo(flags=page.secinfo_flags))
                last_flags = page.secinfo_flags
            if page.data is not last_data:  # a run repeats one source page
                proc.write(src, page.data)
                last_data = page.data
            arg = uapi.sgx_enclave_add_pages(
                src=src, offset=page.offset, length=PAGE_SIZE, secinfo=secinfo,
                flags=uapi.SGX_PAGE_MEASURE if page.chunks else 0,
            )
            proc.ioctl(fd, uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)
        if attributes & uapi.SGX_ATTR_PROVISIONKEY:
            pfd = proc.open("/dev/sgx_provision", os.O_RDWR)
            try:
                proc.ioctl(fd, uapi.SGX_IOC_ENCLAVE_PROVISION, uapi.sgx_enclave_provision(fd=pfd))
            finally:
                proc.close(pfd)
        sig_addr = args + 2 * PAGE_SIZE
        proc.write(sig_addr, sigstruct)
        proc.ioctl(fd, uapi.SGX_IOC_ENCLAVE_INIT, uapi.sgx_enclave_init(sigstruct=sig_addr))
    except BaseException:
        for addr, length in cleanup:
            proc.munmap(addr, length)
        proc.close(fd)
        raise
    for addr, length in cleanup[1:]:
        proc.munmap(addr, length)
    return LinuxEnclave(proc, fd, base, size, plan, sigstruct, attributes, xfrm, miscselect)


def load_sdk(proc: Process, enclave: SdkEnclave, sigstruct: bytes | None = None, **secs: int) -> LinuxEnclave:
    """Load an SDK enclave with its embedded SIGSTRUCT (or `sigstruct`)."""
    return load_plan(proc, enclave.plan, enclave.sigstruct if sigstruct is None else sigstruct, **secs)


def load_sgxs(proc: Process, enclave: SgxsEnclave, sigstruct: bytes | None, **secs: int) -> LinuxEnclave:
    """Load an SGXS enclave; EINIT needs its SIGSTRUCT (the `.sig` file)."""
    if sigstruct is None:
        raise UnsignedEnclaveError("unsigned enclave: an SGXS stream needs its SIGSTRUCT (.sig) for EINIT")
    return load_plan(proc, enclave.plan, sigstruct, **secs)
