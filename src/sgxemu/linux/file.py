"""Open files (struct file) and the operations a device provides (struct file_operations)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .process import Thread
    from .vma import Vma

FMODE_READ = 0x1
FMODE_WRITE = 0x2


class FileOps(Protocol):
    name: str

    def open(self, file: OpenFile, thread: Thread) -> None: ...

    def release(self, file: OpenFile) -> None: ...

    def mmap(self, file: OpenFile, vma: Vma, thread: Thread) -> None:
        """Accept or refuse (KernelError) a new mapping; may set vm_ops and flags."""
        ...

    def get_unmapped_area(
        self, file: OpenFile, thread: Thread, addr: int, length: int, pgoff: int, flags: int
    ) -> int: ...

    def ioctl(self, file: OpenFile, thread: Thread, cmd: int, arg: Any) -> int: ...


class OpenFile:
    """One open file description, shared by fd-table entries and VMAs (reference counted)."""

    def __init__(self, path: str, f_op: FileOps, flags: int) -> None:
        self.path = path
        self.f_op = f_op
        self.f_flags = flags
        acc = flags & os.O_ACCMODE
        self.f_mode = (FMODE_READ if acc in (os.O_RDONLY, os.O_RDWR) else 0) | (
            FMODE_WRITE if acc in (os.O_WRONLY, os.O_RDWR) else 0
        )
        self.private_data: Any = None
        self.refcount = 1

    def get(self) -> OpenFile:
        self.refcount += 1
        return self

    def put(self) -> None:
        """fput: the last reference runs the driver's release."""
        self.refcount -= 1
        if self.refcount == 0:
            self.f_op.release(self)

    def __repr__(self) -> str:
        return f"OpenFile({self.path}, refs={self.refcount})"
