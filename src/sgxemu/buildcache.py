"""Compile packaged sources with the system compiler into a cache keyed by their content.

Used for the test enclave and the preload library: an unchanged tree never rebuilds, two
different trees never share an artefact, and concurrent builders never see a half-written
file (each builds in a private directory, then renames the result into place).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


class BuildError(RuntimeError):
    """A build failed (no compiler, or it failed); `output` holds the compiler's output."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/sgxemu`` or ``~/.cache/sgxemu``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "sgxemu"


def content_digest(parts: Iterable[str], sources: dict[str, bytes]) -> str:
    """Hex SHA-256 over the build's parameters and every source file."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    for name, data in sorted(sources.items()):
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def first_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower():
            return ln
    return lines[0] if lines else "no output"


def cached_build(
    *,
    what: str,
    cc: str,
    sources: dict[str, bytes],
    digest: str,
    out_dir: Path,
    product: str,
    argv: Callable[[str], list[str]],
    error: type[BuildError],
) -> Path:
    """Return `out_dir/product`, building it with `argv(compiler)` when the stamp is stale."""
    target = out_dir / product
    stamp = out_dir / (product + ".stamp")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return target
    compiler = shutil.which(cc)
    if compiler is None:
        raise error(f"cannot build {what}: compiler {cc!r} not found on PATH")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"cannot create the build directory {out_dir}: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as tmp:
        work = Path(tmp)
        for name, data in sources.items():
            (work / name).write_bytes(data)
        try:
            proc = subprocess.run(
                argv(compiler), cwd=work, capture_output=True, text=True, check=False
            )
        except OSError as exc:
            raise error(f"cannot run {compiler}: {exc}") from exc
        if proc.returncode != 0:
            output = proc.stdout + proc.stderr
            raise error(
                f"{cc} failed (exit {proc.returncode}) building {what}: {first_error_line(output)}",
                output,
            )
        os.replace(work / product, target)
        (work / "stamp").write_text(digest + "\n")
        os.replace(work / "stamp", stamp)
    return target
