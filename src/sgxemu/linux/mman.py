"""mmap(2)/mprotect(2) flag values of the Linux uapi (asm-generic/mman-common.h, mman.h)."""

from __future__ import annotations

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_TYPE = 0x0F
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_FIXED_NOREPLACE = 0x100000
MAP_FAILED = -1
