"""Build sgxemu's own test enclave (``test_encl.elf``) with the system gcc.

The sources ship as package data. They are copied into a cache directory
keyed by a hash of sources and flags, so an unchanged tree never rebuilds
and two different trees never share an artefact.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..buildcache import BuildError, cached_build, content_digest, default_cache_root

__all__ = [
    "ELF_NAME",
    "ENCLAVE_CFLAGS",
    "ENCLAVE_SOURCES",
    "EnclaveBuildError",
    "build_test_enclave",
    "default_cache_root",
    "source_hash",
]

ELF_NAME = "test_encl.elf"
ENCLAVE_SOURCES: tuple[str, ...] = ("encl_entry.S", "encl.c", "encl.lds")
_COMPILED = ("encl_entry.S", "encl.c")

# -march=x86-64 pins the SSE2 baseline whatever the distro default is: the
# emulator's CPU core has no AVX and silently mis-executes some VEX forms.
ENCLAVE_CFLAGS: tuple[str, ...] = (
    "-static-pie",
    "-nostdlib",
    "-ffreestanding",
    "-fPIE",
    "-fno-stack-protector",
    "-march=x86-64",
    "-mtune=generic",
    "-mno-avx",
    "-mno-avx2",
    "-mno-avx512f",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-fno-jump-tables",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,-T,encl.lds,--build-id=none,-z,noexecstack,--fatal-warnings",
)


class EnclaveBuildError(BuildError):
    """The test enclave could not be built (no compiler, or it failed)."""


def _read_sources() -> dict[str, bytes]:
    pkg = resources.files(__package__ or "sgxemu.testenclave")
    return {name: pkg.joinpath(name).read_bytes() for name in ENCLAVE_SOURCES}


def source_hash(cc: str = "gcc") -> str:
    """Hex digest over compiler name, flags and every source file."""
    return content_digest((cc, *ENCLAVE_CFLAGS), _read_sources())


def build_test_enclave(out_dir: Path | None = None, *, cc: str = "gcc") -> Path:
    """Build the test enclave if needed and return the path of the ELF.

    ``out_dir`` defaults to ``<cache>/testenclave-<hash>``; a stamp file holding
    the hash decides whether an existing ELF there is current.
    """
    digest = source_hash(cc)
    if out_dir is None:
        out_dir = default_cache_root() / f"testenclave-{digest[:16]}"
    out_dir = Path(out_dir)
    return cached_build(
        what="the test enclave",
        cc=cc,
        sources=_read_sources(),
        digest=digest,
        out_dir=out_dir,
        product=ELF_NAME,
        argv=lambda compiler: [compiler, *ENCLAVE_CFLAGS, "-o", ELF_NAME, *_COMPILED],
        error=EnclaveBuildError,
    )
