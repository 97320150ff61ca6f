"""Configuration of a host process under the preload library, read from the environment.

`sgxemu exec` sets these variables from its options; they can also be set by hand with
`LD_PRELOAD=$(sgxemu-preload-path) PROGRAM` (see docs/preload.md):

| variable | meaning | default |
|---|---|---|
| SGXEMU_EPC | EPC size: bytes, or with K/M/G (KiB, MiB, GiB) | 128M |
| SGXEMU_SGX1 | 1: an SGX1-only processor (CPUID without SGX2; SGX2 ioctls give ENODEV) | 0 |
| SGXEMU_KERNEL | the driver design (`sgxemu.linux.variants.KERNELS`) | merged |
| SGXEMU_CPUS | logical processors | 4 |
| SGXEMU_SEED | the machine's seed (keys, randomness) | 0 |
| SGXEMU_FLC | 0: no flexible launch control (then there is no /dev/sgx_enclave) | 1 |
| SGXEMU_XSTATE | 1: x87/SSE registers pass between host and enclave at ENCLU | 0 |
| SGXEMU_CPUID | auto, fault (CPUID faulting only), patch (UD2 patching only), off | auto |
| SGXEMU_DEV_NOEXEC | 1: /dev is mounted noexec | 0 |
| SGXEMU_VERBOSE | 1: one line at start-up saying what is emulated | 0 |
| SGXEMU_DISABLE | 1: the library does nothing | 0 |
| SGXEMU_PYTHON | the Python interpreter whose environment has sgxemu | the build's |
| SGXEMU_STATS | a directory: at exit() the process writes its counters there (`preload.stats`) | unset |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PreloadConfig", "parse_size"]

_SIZE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\s*([kKmMgGtT])?(i?[bB])?\s*$")
_UNITS = {"k": 10, "m": 20, "g": 30, "t": 40}
CPUID_MODES = ("auto", "fault", "patch", "off")


def parse_size(text: str) -> int:
    """`128M`, `64MiB`, `0x800000`, `4096` -> bytes (K/M/G/T are powers of 1024)."""
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (examples: 128M, 64MiB, 0x800000)")
    value = int(m.group(1), 0)
    unit = m.group(2)
    if unit:
        value <<= _UNITS[unit.lower()]
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() not in ("0", "no", "false", "off")


@dataclass(frozen=True)
class PreloadConfig:
    epc_size: int = 128 << 20
    sgx2: bool = True
    kernel: str = "merged"
    cpus: int = 4
    seed: int = 0
    flc: bool = True
    xstate: bool = False
    cpuid: str = "auto"
    dev_noexec: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PreloadConfig:
        env = os.environ if env is None else env
        cfg = cls(
            epc_size=parse_size(env.get("SGXEMU_EPC") or "128M"),
            sgx2=not _flag(env, "SGXEMU_SGX1", False),
            kernel=(env.get("SGXEMU_KERNEL") or "merged").strip(),
            cpus=int(env.get("SGXEMU_CPUS") or 4),
            seed=int(env.get("SGXEMU_SEED") or "0", 0),
            flc=_flag(env, "SGXEMU_FLC", True),
            xstate=_flag(env, "SGXEMU_XSTATE", False),
            cpuid=(env.get("SGXEMU_CPUID") or "auto").strip().lower(),
            dev_noexec=_flag(env, "SGXEMU_DEV_NOEXEC", False),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.epc_size <= 0 or self.epc_size % 4096:
            raise ValueError(f"EPC size must be a positive multiple of 4096, got {self.epc_size}")
        if self.cpus < 1:
            raise ValueError(f"need at least one logical processor, got {self.cpus}")
        if self.cpuid not in CPUID_MODES:
            raise ValueError(f"SGXEMU_CPUID must be one of {', '.join(CPUID_MODES)}")
        from ..linux.variants import KERNELS

        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; choose one of {', '.join(KERNELS)}")

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce this configuration."""
        return {
            "SGXEMU_EPC": str(self.epc_size),
            "SGXEMU_SGX1": "0" if self.sgx2 else "1",
            "SGXEMU_KERNEL": self.kernel,
            "SGXEMU_CPUS": str(self.cpus),
            "SGXEMU_SEED": str(self.seed),
            "SGXEMU_FLC": "1" if self.flc else "0",
            "SGXEMU_XSTATE": "1" if self.xstate else "0",
            "SGXEMU_CPUID": self.cpuid,
            "SGXEMU_DEV_NOEXEC": "1" if self.dev_noexec else "0",
        }
