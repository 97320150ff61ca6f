"""Build sgxemu's own test enclave (``test_encl.elf``) with the system gcc.

The sources ship as package data. They are copied into a cache directory
keyed by a hash of sources and flags, so an unchanged tree never rebuilds
and two different trees never share an artefact.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

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
_STAMP = "test_encl.stamp"

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


class EnclaveBuildError(RuntimeError):
    """The test enclave could not be built (no compiler, or it failed)."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def _read_sources() -> dict[str, bytes]:
    pkg = resources.files(__package__ or "sgxemu.testenclave")
    return {name: pkg.joinpath(name).read_bytes() for name in ENCLAVE_SOURCES}


def source_hash(cc: str = "gcc") -> str:
    """Hex digest over compiler name, flags and every source file."""
    h = hashlib.sha256()
    h.update(cc.encode() + b"\0")
    for flag in ENCLAVE_CFLAGS:
        h.update(flag.encode() + b"\0")
    for name, data in sorted(_read_sources().items()):
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/sgxemu`` or ``~/.cache/sgxemu``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "sgxemu"


def _first_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower():
            return ln
    return lines[0] if lines else "no output"


def build_test_enclave(out_dir: Path | None = None, *, cc: str = "gcc") -> Path:
    """Build the test enclave if needed and return the path of the ELF.

    ``out_dir`` defaults to ``<cache>/testenclave-<hash>``; a stamp file holding
    the hash decides whether an existing ELF there is current.
    """
    digest = source_hash(cc)
    if out_dir is None:
        out_dir = default_cache_root() / f"testenclave-{digest[:16]}"
    out_dir = Path(out_dir)
    elf = out_dir / ELF_NAME
    stamp = out_dir / _STAMP
    if elf.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return elf

    compiler = shutil.which(cc)
    if compiler is None:
        raise EnclaveBuildError(f"cannot build the test enclave: compiler {cc!r} not found on PATH")

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnclaveBuildError(f"cannot create enclave build directory {out_dir}: {exc}") from exc

    # Build in a private directory, then rename: concurrent builders never
    # see a half-written ELF.
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as tmp:
        work = Path(tmp)
        for name, data in _read_sources().items():
            (work / name).write_bytes(data)
        cmd = [compiler, *ENCLAVE_CFLAGS, "-o", ELF_NAME, *_COMPILED]
        try:
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise EnclaveBuildError(f"cannot run {compiler}: {exc}") from exc
        if proc.returncode != 0:
            output = proc.stdout + proc.stderr
            raise EnclaveBuildError(
                f"{cc} failed (exit {proc.returncode}) building the test enclave: "
                f"{_first_error_line(output)}",
                output,
            )
        os.replace(work / ELF_NAME, elf)
        tmp_stamp = work / _STAMP
        tmp_stamp.write_text(digest + "\n")
        os.replace(tmp_stamp, stamp)
    return elf
