"""Build the preload library (``libsgxemu_preload.so``) with the system C compiler.

The C sources ship as package data; they are compiled into a cache directory keyed by a hash
of the sources, the flags and the Python the library embeds, like the test enclave
(`sgxemu.testenclave.build`). CPython is embedded with the flags of `sysconfig` (what
``python3-config --embed`` prints): its headers and its shared libpython.
"""

from __future__ import annotations

import os
import platform
import sys
import sysconfig
from importlib import resources
from pathlib import Path

from ..buildcache import BuildError, cached_build, content_digest, default_cache_root

__all__ = [
    "LIB_NAME",
    "PRELOAD_SOURCES",
    "PreloadBuildError",
    "build_preload",
    "check_platform",
    "python_embed_flags",
]

LIB_NAME = "libsgxemu_preload.so"
PRELOAD_SOURCES: tuple[str, ...] = (
    "sgxemu_preload.h",
    "sgxemu_preload.c",
    "sgxemu_python.c",
    "sgxemu_vdso.S",
)
_COMPILED = ("sgxemu_preload.c", "sgxemu_python.c", "sgxemu_vdso.S")
CFLAGS: tuple[str, ...] = (
    "-shared",
    "-fPIC",
    "-O2",
    "-g",
    "-Wall",
    "-Werror",
    "-fvisibility=default",
    "-fno-strict-aliasing",
    "-pthread",
)


class PreloadBuildError(BuildError):
    """The preload library cannot be built here (one line says why)."""


def check_platform() -> None:
    """The preload library runs x86-64 Linux programs only."""
    if not sys.platform.startswith("linux"):
        raise PreloadBuildError(f"unsupported operating system {sys.platform!r} (needs Linux)")
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        raise PreloadBuildError(f"unsupported architecture {machine!r} (needs x86-64)")


def python_embed_flags() -> tuple[list[str], list[str], str]:
    """(compile flags, link flags, interpreter) to embed this Python."""
    include = sysconfig.get_config_var("INCLUDEPY") or sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        raise PreloadBuildError(
            f"Python.h not found in {include}: install the Python development headers"
        )
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise PreloadBuildError(
            "this Python has no shared libpython (built without --enable-shared): "
            "it cannot be embedded in a preload library"
        )
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    version = sysconfig.get_config_var("LDVERSION") or sysconfig.get_config_var("VERSION")
    libname = f"python{version}"
    if not any(Path(libdir).glob(f"lib{libname}.so*")):
        raise PreloadBuildError(f"lib{libname}.so not found in {libdir!r}")
    link = [f"-L{libdir}", f"-Wl,-rpath,{libdir}", f"-l{libname}", "-ldl", "-lm"]
    return [f"-I{include}"], link, sys.executable


def _read_sources() -> dict[str, bytes]:
    pkg = resources.files(__package__ or "sgxemu.preload")
    return {name: pkg.joinpath(name).read_bytes() for name in PRELOAD_SOURCES}


def build_preload(out_dir: Path | None = None, *, cc: str | None = None) -> Path:
    """Build the library if needed and return its path (`PreloadBuildError` says why not)."""
    check_platform()
    cc = cc or os.environ.get("CC") or "gcc"
    cflags, ldflags, python = python_embed_flags()
    sources = _read_sources()
    digest = content_digest((cc, python, *CFLAGS, *cflags, *ldflags), sources)
    if out_dir is None:
        out_dir = default_cache_root() / f"preload-{digest[:16]}"
    define = f'-DSGXEMU_DEFAULT_PYTHON="{python}"'
    return cached_build(
        what="the preload library",
        cc=cc,
        sources=sources,
        digest=digest,
        out_dir=Path(out_dir),
        product=LIB_NAME,
        argv=lambda compiler: [
            compiler, *CFLAGS, *cflags, define, "-o", LIB_NAME, *_COMPILED, *ldflags
        ],
        error=PreloadBuildError,
    )
