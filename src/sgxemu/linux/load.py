"""Build an enclave through the Linux ABI the way the kernel selftest does (load.c, main.c).

`encl_build` takes an `EnclaveImage` (from `load_segments`) and a signing key, and does what
`encl_load` + `encl_build` + `setup_test_encl` do in a process: open /dev/sgx_enclave, probe
two mmaps, reserve a naturally aligned ELRANGE, CREATE, ADD_PAGES per segment, INIT, then map
every segment MAP_SHARED|MAP_FIXED with its protection.

An image whose relocations the loader applies (`RelocationPolicy.LOADER`) gets them once the
reservation fixed the base, in the loader's private copy of the file; it is signed after that,
so a SIGSTRUCT given by the caller must have been made for the base the reservation picks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import rsa

from .. import uapi
from ..arch.constants import PAGE_SIZE
from ..loader.selftest_layout import EnclaveImage
from ..sign import EnclaveMeasurer, sign_sigstruct
from .mman import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_EXEC,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
)
from .process import Process

SECS_ATTRIBUTES = uapi.SGX_ATTR_MODE64BIT
SECS_XFRM = 3


def measure(image: EnclaveImage) -> bytes:
    """MRENCLAVE as sigstruct.c's encl_measure computes it; BaseRequiredError while the loader
    still has relocations to apply (`EnclaveImage.at_base`)."""
    image.check_measurable()
    m = EnclaveMeasurer(image.encl_size, 1)
    for seg in image.segments:
        for off in range(0, seg.size, PAGE_SIZE):
            m.add_page(
                seg.offset + off, seg.data[off : off + PAGE_SIZE], seg.secinfo_flags, seg.measure
            )
    return m.mrenclave()


def sign(image: EnclaveImage, key: rsa.RSAPrivateKey, **overrides: int) -> bytes:
    """The selftest SIGSTRUCT: MODE64BIT, xfrm 3, all masks zero (sigstruct.c)."""
    fields: dict[str, int] = dict(
        attributes=SECS_ATTRIBUTES, xfrm=SECS_XFRM, attributemask=0, xfrmmask=0,
        miscselect=0, miscmask=0, isvprodid=0, isvsvn=0,
    )
    fields.update(overrides)
    return sign_sigstruct(key, enclavehash=measure(image), **fields)  # type: ignore[arg-type]


def secs_page(base: int, size: int, attributes: int = SECS_ATTRIBUTES, xfrm: int = SECS_XFRM) -> bytes:
    secs = uapi.sgx_secs()
    secs.size = size
    secs.base = base
    secs.ssa_frame_size = 1
    secs.attributes = attributes
    secs.xfrm = xfrm
    return bytes(secs)


@dataclass
class LoadedEnclave:
    """What setup_test_encl leaves behind: the fd, ELRANGE and the segment table."""

    proc: Process
    fd: int
    base: int
    size: int
    image: EnclaveImage  # as added: relocated for `base` when the loader applies relocations
    sigstruct: bytes
    src: int  # the "ELF file" mapping (PROT_READ)
    heap_src: int
    mapped: bool = False
    scratch: dict[str, int] = field(default_factory=dict)

    @property
    def tcs(self) -> int:
        return self.base + self.image.tcs_offset

    @property
    def data_start(self) -> int:
        """D in the selftests: the second encl_buffer page."""
        return self.base + self.image.data_offset + PAGE_SIZE

    def delete(self) -> None:
        """encl_delete: unmap ELRANGE and the sources, close the fd."""
        p = self.proc
        p.munmap(self.base, self.size)
        p.munmap(self.src, self.image.src_size)
        p.close(self.fd)
        p.munmap(self.heap_src, self.image.heap.size)


def _rewrite_source(proc: Process, src: int, image: EnclaveImage) -> None:
    """The loader patches its private (copy-on-write) copy of the file before ADD_PAGES."""
    proc.mprotect(src, image.src_size, PROT_READ | PROT_WRITE)
    for seg in image.segments[:-1]:
        proc.write(src + seg.offset, seg.data)
    proc.mprotect(src, image.src_size, PROT_READ)


def encl_map_area(proc: Process, size: int) -> int:
    """load.c's encl_map_area: 2 * size of PROT_NONE, keep the naturally aligned middle."""
    area = proc.mmap(0, 2 * size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS)
    base = (area + size - 1) & ~(size - 1)
    if base > area:
        proc.munmap(area, base - area)
    if area + 2 * size > base + size:
        proc.munmap(base + size, area + 2 * size - (base + size))
    return base


def encl_build(
    proc: Process,
    image: EnclaveImage,
    key: rsa.RSAPrivateKey | None = None,
    *,
    sigstruct: bytes | None = None,
    map_segments: bool = True,
    attributes: int = SECS_ATTRIBUTES,
    base: int | None = None,
) -> LoadedEnclave:
    """Load, build and (by default) map `image` in `proc`; OSError from the failing call.

    ELRANGE goes where load.c's encl_map_area puts it, or at `base` (a multiple of the enclave
    size; EEXIST when something is mapped there), e.g. to use a SIGSTRUCT made offline for that
    base (`sgxemu sign --base`). Without `sigstruct`, `image` is signed with `key` once its
    pages are final (relocated for the base).
    """
    if base is not None and base & (image.encl_size - 1):
        raise ValueError(
            f"enclave base {base:#x} is not a multiple of the enclave size {image.encl_size:#x}"
            " (SECS.BASEADDR must be naturally aligned)"
        )
    assert sigstruct is not None or key is not None, "need a key or a ready SIGSTRUCT"
    fd = proc.open("/dev/sgx_enclave", os.O_RDWR)
    for prot in (PROT_READ, PROT_EXEC):  # load.c's probes: mmap works before CREATE
        probe = proc.mmap(0, PAGE_SIZE, prot, MAP_SHARED, fd, 0)
        proc.munmap(probe, PAGE_SIZE)
    # The ELF file mapped PROT_READ/MAP_PRIVATE, stood in for by anonymous memory.
    src = proc.mmap(0, image.src_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    for seg in image.segments[:-1]:
        proc.write(src + seg.offset, seg.data)
    proc.mprotect(src, image.src_size, PROT_READ)
    heap = image.heap
    heap_src = proc.mmap(0, heap.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    size = image.encl_size
    if base is None:
        base = encl_map_area(proc, size)
    else:
        proc.mmap(base, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE)
    relocated = image.at_base(base)
    if relocated is not image:
        _rewrite_source(proc, src, relocated)
        image, heap = relocated, relocated.heap
    if sigstruct is None:
        assert key is not None
        sigstruct = sign(image, key)
    # Argument blocks in process memory, as a C program would have them.
    scratch = proc.alloc(3 * PAGE_SIZE)
    proc.write(scratch, secs_page(base, size, attributes))
    proc.ioctl(fd, uapi.SGX_IOC_ENCLAVE_CREATE, uapi.sgx_enclave_create(src=scratch))
    secinfo = scratch + PAGE_SIZE
    for seg in image.segments:
        proc.write(secinfo, uapi.sgx_secinfo(flags=seg.secinfo_flags))
        arg = uapi.sgx_enclave_add_pages(
            src=heap_src if seg is heap else src + seg.offset,
            offset=seg.offset,
            length=seg.size,
            secinfo=secinfo,
            flags=uapi.SGX_PAGE_MEASURE if seg.measure else 0,
        )
        proc.ioctl(fd, uapi.SGX_IOC_ENCLAVE_ADD_PAGES, arg)
    sig_addr = scratch + 2 * PAGE_SIZE
    proc.write(sig_addr, sigstruct)
    proc.ioctl(fd, uapi.SGX_IOC_ENCLAVE_INIT, uapi.sgx_enclave_init(sigstruct=sig_addr))
    loaded = LoadedEnclave(proc, fd, base, size, image, sigstruct, src, heap_src)
    loaded.scratch["args"] = scratch
    if map_segments:
        for seg in image.segments:
            proc.mmap(base + seg.offset, seg.size, seg.prot, MAP_SHARED | MAP_FIXED, fd, 0)
        loaded.mapped = True
    return loaded

