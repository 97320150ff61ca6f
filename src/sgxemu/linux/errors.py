"""How the kernel model reports failure: errno values inside, OSError and signals outside.

Kernel functions raise `KernelError` with a positive errno (including the kernel-internal
ERESTARTSYS and ENOIOCTLCMD); the system-call layer turns it into the `OSError` user space sees.
A memory access the kernel cannot fix for the process raises a `Signal` instead: `SIGSEGV`,
`SIGBUS` or `SIGTRAP`. Signals are not OSError subclasses on purpose: a test that expects an
errno should never silently accept a signal, and the reverse.
"""

from __future__ import annotations

import errno
import os
import signal

# Kernel-internal codes (include/linux/errno.h) that never reach user space as such.
ERESTARTSYS = 512
ENOIOCTLCMD = 515

# si_code values (asm-generic/siginfo.h).
SEGV_MAPERR = 1
SEGV_ACCERR = 2
BUS_ADRERR = 2


class KernelError(Exception):
    """A kernel function's negative return value, carried as a positive errno."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.errno = code

    def __repr__(self) -> str:
        return f"KernelError({errno.errorcode.get(self.errno, self.errno)})"


def user_errno(code: int) -> int:
    """The errno user space sees for a kernel return code (syscall exit, no SA_RESTART)."""
    if code == ERESTARTSYS:
        return errno.EINTR
    if code == ENOIOCTLCMD:
        return errno.ENOTTY  # the VFS translation for an unknown ioctl
    return code


def oserror(code: int) -> OSError:
    code = user_errno(code)
    return OSError(code, os.strerror(code))


class Signal(Exception):  # noqa: N818  (named after what it models)
    """A synchronous signal delivered to the process (no handler: the caller catches it)."""

    signo: int = 0

    def __init__(self, addr: int = 0, code: int = 0) -> None:
        super().__init__(addr, code)
        self.addr = addr
        self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(addr={self.addr:#x}, code={self.code})"

    __str__ = __repr__


class SIGSEGV(Signal):  # noqa: N801
    signo = int(signal.SIGSEGV)


class SIGBUS(Signal):  # noqa: N801
    signo = int(signal.SIGBUS)


class SIGTRAP(Signal):  # noqa: N801
    signo = int(signal.SIGTRAP)
