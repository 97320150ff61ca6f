"""The C host program of the preload tests (`tests/preload/host.c`), shared by the tests that run
it under `sgxemu exec` (tests/preload, tests/cli); the `built` fixture is in tests/conftest.py.

`host.c` uses libc and <asm/sgx.h> only; where the system has no kernel uapi headers, the header
is written from sgxemu.uapi. gcc is required: without it these tests fail.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sgxemu import uapi

HOST_C = Path(__file__).resolve().parent / "preload" / "host.c"
TIMEOUT = 240


def _have_sgx_header(cc: str) -> bool:
    probe = subprocess.run(
        [cc, "-E", "-x", "c", "-"], input="#include <asm/sgx.h>\n", capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    return probe.returncode == 0


def write_uapi_header(include_dir: Path) -> Path:
    """<asm/sgx.h> written from sgxemu.uapi, for systems without the kernel's uapi headers."""
    ctype = {ctypes.c_uint64: "__u64", ctypes.c_uint32: "__u32", ctypes.c_uint16: "__u16",
             ctypes.c_uint8: "__u8"}  # fmt: skip
    lines = ["/* Generated from sgxemu/uapi.py (the Linux uapi <asm/sgx.h>). */",
             "#ifndef _ASM_X86_SGX_H", "#define _ASM_X86_SGX_H", "#include <linux/types.h>",
             "enum sgx_page_flags { SGX_PAGE_MEASURE = 0x01 };", "#define SGX_MAGIC 0xA4"]  # fmt: skip
    for name in dir(uapi):
        if name.startswith("SGX_IOC_"):
            lines.append(f"#define {name} {getattr(uapi, name):#x}UL")
    for cls in (uapi.sgx_enclave_create, uapi.sgx_enclave_add_pages, uapi.sgx_enclave_init,
                uapi.sgx_enclave_provision, uapi.sgx_enclave_restrict_permissions,
                uapi.sgx_enclave_modify_types, uapi.sgx_enclave_remove_pages,
                uapi.sgx_enclave_run):  # fmt: skip
        lines.append(f"struct {cls.__name__} {{")
        for field, typ in cls._fields_:  # type: ignore[misc]
            if hasattr(typ, "_length_"):
                lines.append(f"\t{ctype[typ._type_]} {field}[{typ._length_}];")
            else:
                lines.append(f"\t{ctype[typ]} {field};")
        lines.append("};")
    lines.append("#endif")
    path = include_dir / "asm" / "sgx.h"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def compile_host(out_dir: Path) -> Path:
    cc = shutil.which("gcc")
    assert cc is not None, "gcc is required to build the host program (install gcc)"
    flags = ["-O2", "-Wall", "-Werror", "-pthread"]
    if not _have_sgx_header(cc):
        write_uapi_header(out_dir / "include")
        flags.append(f"-I{out_dir / 'include'}")
    exe = out_dir / "host"
    subprocess.run([cc, *flags, "-o", str(exe), str(HOST_C)], check=True)
    return exe


def sgxemu_exec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`sgxemu exec ARGS` in a fresh interpreter (the program replaces it: execve)."""
    cmd = [sys.executable, "-m", "sgxemu", "exec", *args]
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=full, check=False)
