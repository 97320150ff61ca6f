"""Processes and threads: file descriptors, an address space, and libc-shaped system calls.

A `Process` owns an `Mm` (VMAs over a `UserMemory` page table) and its fd table; a `Thread`
runs on one logical processor and holds its engine (its registers). The calls mirror libc:
`open`, `close`, `mmap`, `munmap`, `mprotect`, `ioctl` raise `OSError(errno)`; `read`/`write`
are untrusted accesses from host code and raise a `Signal` (SIGSEGV/SIGBUS) where a real
process would get one. The process methods act on the main thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .. import uapi
from ..arch.constants import ENCLU_OPCODE, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, PfErrorCode
from ..hw.memory import PTE_A, PTE_ADDR_MASK, PTE_P, PTE_W
from .encl import READ_IMPLIES_EXEC, SgxEncl, sgx_encl_mm_drop
from .errors import KernelError, oserror
from .fault import do_user_addr_fault
from .file import FMODE_READ, FMODE_WRITE, OpenFile
from .mman import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_FIXED_NOREPLACE,
    MAP_PRIVATE,
    MAP_SHARED,
    MAP_SHARED_VALIDATE,
    MAP_TYPE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
)
from .usermem import UserMemory
from .vma import (
    MMAP_MIN_ADDR,
    TASK_SIZE,
    VM_ACCESS_FLAGS,
    VM_EXEC,
    VM_IO,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_PFNMAP,
    VM_READ,
    VM_SHARED,
    Mm,
    Vma,
    calc_vm_prot_bits,
    vm_page_prot,
)

if TYPE_CHECKING:
    from ..exec.engine import Engine
    from .machine import Machine

VDSO_BASE = 0x7FFF_F7FC_0000  # [choice] where every process gets its vDSO page
VDSO_ENCLU = VDSO_BASE + 0x100  # the ENCLU of __vdso_sgx_enter_enclave (EENTER point and AEP)
CALLBACK_BASE = 0x7FFF_F7F0_0000  # fake code addresses handed out by Process.callback
STACK_SIZE = 256 << 10
FIRST_FD = 3  # 0-2 are the standard streams of a real process

UserHandler = Callable[[int, int, int, int, int, int, uapi.sgx_enclave_run], int]
_T = TypeVar("_T")


def page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & PAGE_MASK


class Thread:
    """A task: a logical processor, an engine holding its registers, signal state."""

    def __init__(self, process: Process, tid: int, lp: int) -> None:
        self.process = process
        self.machine = process.machine
        self.tid = tid
        self.lp = lp
        self.signal_pending = False
        self.call: EnclaveCall | None = None  # the vDSO call in progress, if any
        self._engine: Engine | None = None
        if getattr(process.mm.mem, "host_memory", False):
            self.stack_top = 0  # the host thread has its own stack (preload library)
        else:
            self.stack_top = process._map_internal(STACK_SIZE, PROT_READ | PROT_WRITE, "[stack]") + STACK_SIZE

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            m = self.machine
            self._engine = m.make_engine(m.cpu.lp(self.lp), self.process.mm.mem)
        return self._engine

    def __repr__(self) -> str:
        return f"Thread(pid={self.process.pid}, tid={self.tid}, lp={self.lp})"

    # -- system-call plumbing ---------------------------------------------------------------------
    def _syscall(self, name: str, fn: Callable[[], _T]) -> _T:
        self.process.syscalls[name] += 1
        if not self.process.alive:
            raise ProcessLookupError("the process has exited")
        if self.machine.tracer is not None:
            fn = self.machine.tracer.syscall(self, name, fn)
        try:
            return fn()
        except KernelError as e:
            raise oserror(e.errno) from None
        finally:
            self.signal_pending = False  # any pending signal is delivered on the way out
            self.machine.kernel_exit(self)

    # -- files ------------------------------------------------------------------------------------
    def open(self, path: str, flags: int = os.O_RDWR) -> int:
        def body() -> int:
            fops = self.machine.driver.devices.get(path)
            if fops is None:
                raise KernelError(errno.ENOENT)
            file = OpenFile(path, fops, flags)
            fops.open(file, self)
            fd = FIRST_FD
            while fd in self.process.fds:
                fd += 1
            self.process.fds[fd] = file
            return fd

        return self._syscall("open", body)

    def close(self, fd: int) -> None:
        def body() -> None:
            file = self.process.fds.pop(fd, None)
            if file is None:
                raise KernelError(errno.EBADF)
            file.put()

        self._syscall("close", body)

    def ioctl(self, fd: int, request: int, arg: Any = None) -> int:
        def body() -> int:
            file = self.process.fds.get(fd)
            if file is None:
                raise KernelError(errno.EBADF)
            cmd = request & 0xFFFF_FFFF  # unsigned int cmd
            self.process.ioctls[cmd] += 1
            return file.f_op.ioctl(file, self, cmd, arg)

        return self._syscall("ioctl", body)

    # -- memory mappings --------------------------------------------------------------------------
    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
        def body() -> int:
            if offset & ~PAGE_MASK:
                raise KernelError(errno.EINVAL)  # sys_mmap (x86)
            file = None
            if not flags & MAP_ANONYMOUS:
                file = self.process.fds.get(fd)
                if file is None:
                    raise KernelError(errno.EBADF)
            return self.process.do_mmap(self, file, addr, length, prot, flags, offset >> PAGE_SHIFT)

        return self._syscall("mmap", body)

    def munmap(self, addr: int, length: int) -> None:
        def body() -> None:
            if addr & ~PAGE_MASK or addr > TASK_SIZE or length > TASK_SIZE - addr:
                raise KernelError(errno.EINVAL)
            size = page_align(length)
            if not size:
                raise KernelError(errno.EINVAL)
            self.process.do_munmap(addr, addr + size)

        self._syscall("munmap", body)

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        self._syscall("mprotect", lambda: self.process.do_mprotect(addr, length, prot))

    # -- memory access ----------------------------------------------------------------------------
    def _page(self, addr: int, write: bool, kernel: bool) -> int:
        """The PTE of `addr` once present with the needed right, faulting it in as the CPU would."""
        mem = self.process.mm.mem
        key = addr >> PAGE_SHIFT
        for _ in range(16):
            pte = mem.ptes.get(key, 0)
            if pte & PTE_P and (not write or pte & PTE_W):
                if not pte & PTE_A:
                    mem.ptes[key] = pte | PTE_A  # the walk sets the accessed bit
                return pte
            code = (
                (int(PfErrorCode.W) if write else 0)
                | (0 if kernel else int(PfErrorCode.U))
                | (int(PfErrorCode.P) if pte & PTE_P else 0)
            )
            sig = do_user_addr_fault(self.machine, self, addr, code)
            self.machine.fault_exit(self)
            if sig is not None:
                if kernel:
                    raise KernelError(errno.EFAULT)  # the exception table fixup of uaccess
                raise sig
        raise RuntimeError(f"fault at {addr:#x} never resolves (emulator bug)")

    def _access(self, addr: int, size: int, data: bytes | None, kernel: bool) -> bytes:
        if kernel and (addr + size > TASK_SIZE or addr + size < addr):
            raise KernelError(errno.EFAULT)  # access_ok
        epc = self.machine.cpu.epc
        mem = self.process.mm.mem
        write = data is not None
        out = bytearray()
        pos = 0
        while pos < size:
            a = addr + pos
            n = min(size - pos, PAGE_SIZE - (a & ~PAGE_MASK))
            pte = self._page(a, write, kernel)
            # Outside enclave mode EPC reads as all ones and writes are dropped (abort page).
            in_epc = epc.index(pte & PTE_ADDR_MASK) >= 0
            if data is None:
                chunk = b"\xff" * n if in_epc else mem.read(a, n)
                if n == size:
                    return chunk  # one page: no copy into `out`
                out += chunk
            elif not in_epc:
                mem.write(a, data if n == size else data[pos : pos + n])
            pos += n
        return bytes(out)

    def read(self, addr: int, size: int) -> bytes:
        """An untrusted read by host code (SIGSEGV/SIGBUS as a process would get)."""
        self.process.user_accesses += 1
        return self._access(addr, size, None, False)

    def write(self, addr: int, data: bytes | ctypes.Structure) -> None:
        """An untrusted write by host code; bytes or a ctypes struct."""
        self.process.user_accesses += 1
        raw = bytes(data)
        self._access(addr, len(raw), raw, False)

    def copy_from_user(self, addr: int, size: int) -> bytes:
        """The kernel reading user memory: EFAULT instead of a signal."""
        return self._access(addr, size, None, True)

    def copy_to_user(self, addr: int, data: bytes) -> None:
        self._access(addr, len(data), bytes(data), True)

    def get_user_pages(self, addr: int) -> bytes:
        """get_user_pages(addr, 1, 0): the page's contents, or EFAULT."""
        vma = self.process.mm.vma_lookup(addr)
        if vma is None or vma.flags & (VM_IO | VM_PFNMAP) or not vma.flags & VM_READ:
            raise KernelError(errno.EFAULT)
        return self.copy_from_user(addr & PAGE_MASK, PAGE_SIZE)

    # -- another process's view (ptrace, /proc/pid/mem) --------------------------------------------
    def access_process_vm(self, addr: int, size: int, data: bytes | None = None) -> bytes:
        """access_remote_vm with FOLL_FORCE, as /proc/pid/mem does: ordinary pages whatever
        their protection; VM_IO|VM_PFNMAP mappings through vm_ops->access (EDBGRD/EDBGWR on a
        debug enclave). Returns what was read (or written); OSError(EIO) when nothing was."""
        out = bytearray()
        mem = self.process.mm.mem
        pos = 0
        while pos < size:
            a = addr + pos
            n = min(size - pos, PAGE_SIZE - (a & ~PAGE_MASK))
            vma = self.process.mm.vma_lookup(a)
            if vma is None:
                break
            if vma.flags & (VM_IO | VM_PFNMAP):
                access = getattr(vma.ops, "access", None)
                if access is None:
                    break
                buf = bytearray(data[pos : pos + n]) if data is not None else bytearray(n)
                ret = access(vma, a, buf, data is not None)
                if ret <= 0:
                    break
                out += buf[:ret]
                pos += ret
                if ret < n:
                    break
                continue
            if not mem.has_frame(a):
                mem.map_anonymous(a & PAGE_MASK, PAGE_SIZE, vma.prot)  # faulted in, forced
            if data is not None:
                mem.write(a, data[pos : pos + n])
            else:
                out += mem.read(a, n)
            pos += n
        if not pos:
            raise oserror(errno.EIO)
        return bytes(out) if data is None else bytes(data[:pos])

    # -- CPU --------------------------------------------------------------------------------------
    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        return self.machine.cpu.cpuid(leaf, subleaf)

    # -- the vDSO ---------------------------------------------------------------------------------
    def start_enclave_call(
        self, rdi: int, rsi: int, rdx: int, function: int, r8: int, r9: int,
        run: uapi.sgx_enclave_run,
    ) -> EnclaveCall:
        """Begin __vdso_sgx_enter_enclave without waiting (the machine runs it in slices)."""
        if self.call is not None and not self.call.busy:
            raise RuntimeError(f"{self} is already in a vDSO call")
        call = EnclaveCall(self, rdi, rsi, rdx, function, r8, r9, run)
        self.machine.calls.append(call)
        self.call = call
        return call

    def vdso_sgx_enter_enclave(
        self, rdi: int, rsi: int, rdx: int, function: int, r8: int, r9: int,
        run: uapi.sgx_enclave_run,
    ) -> int:
        call = self.start_enclave_call(rdi, rsi, rdx, function, r8, r9, run)
        return self.machine.wait(call)


class Process:
    """A process: an mm, an fd table, threads, and counters for comparisons."""

    def __init__(self, machine: Machine, pid: int, arena_size: int, *, mm: Mm | None = None) -> None:
        self.machine = machine
        self.pid = pid
        if mm is None:
            mm = Mm(UserMemory(arena_size))
        mm.owner = self
        self.mm = mm
        self.fds: dict[int, OpenFile] = {}
        self.threads: list[Thread] = []
        self.personality = 0
        self.alive = True
        self.syscalls: Counter[str] = Counter()
        self.ioctls: Counter[int] = Counter()
        self.page_faults = 0
        self.user_accesses = 0
        self.sgx_encl_mms: list[SgxEncl] = []  # enclaves whose mm_list holds this mm
        self.callbacks: dict[int, UserHandler] = {}
        self._next_tid = pid
        # A process over the host's own memory (the preload library's HostMemory) has the host's
        # vDSO instead of the model's page.
        if not getattr(self.mm.mem, "host_memory", False):
            vdso = self._map_internal(PAGE_SIZE, PROT_READ | PROT_EXEC, "[vdso]", VDSO_BASE)
            self.mm.mem.map_anonymous(vdso, PAGE_SIZE, PROT_READ | PROT_EXEC)
            self.mm.mem.write(VDSO_ENCLU, ENCLU_OPCODE)
        self.main = self.thread(lp=0)

    def __repr__(self) -> str:
        return f"Process({self.pid})"

    def thread(self, lp: int | None = None) -> Thread:
        """A new thread, on logical processor `lp` (default: the next one, round robin)."""
        if lp is None:
            lp = len(self.threads) % len(self.machine.cpu.lps)
        self.machine.cpu.lp(lp)  # validates the index
        t = Thread(self, self._next_tid, lp)
        self._next_tid += 1
        self.threads.append(t)
        return t

    @property
    def cpumask(self) -> set[int]:
        """mm_cpumask: the logical processors this mm's threads run on."""
        return {t.lp for t in self.threads}

    def callback(self, fn: UserHandler) -> int:
        """A code address for `fn`, to store in sgx_enclave_run.user_handler."""
        addr = CALLBACK_BASE + 16 * len(self.callbacks)
        self.callbacks[addr] = fn
        return addr

    # -- libc-shaped calls on the main thread ------------------------------------------------------
    def open(self, path: str, flags: int = os.O_RDWR) -> int:
        return self.main.open(path, flags)

    def close(self, fd: int) -> None:
        self.main.close(fd)

    def ioctl(self, fd: int, request: int, arg: Any = None) -> int:
        return self.main.ioctl(fd, request, arg)

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
        return self.main.mmap(addr, length, prot, flags, fd, offset)

    def munmap(self, addr: int, length: int) -> None:
        self.main.munmap(addr, length)

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        self.main.mprotect(addr, length, prot)

    def read(self, addr: int, size: int) -> bytes:
        return self.main.read(addr, size)

    def write(self, addr: int, data: bytes | ctypes.Structure) -> None:
        self.main.write(addr, data)

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        return self.main.cpuid(leaf, subleaf)

    def vdso_sgx_enter_enclave(
        self, rdi: int, rsi: int, rdx: int, function: int, r8: int, r9: int,
        run: uapi.sgx_enclave_run,
    ) -> int:
        return self.main.vdso_sgx_enter_enclave(rdi, rsi, rdx, function, r8, r9, run)

    # -- conveniences --------------------------------------------------------------------------------
    def alloc(self, size: int) -> int:
        """Anonymous private RW memory (an mmap), for op structs and the like."""
        return self.mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)

    def put(self, addr: int, obj: ctypes.Structure | bytes) -> None:
        self.write(addr, bytes(obj))

    def get(self, addr: int, cls: type[ctypes.Structure]) -> Any:
        return cls.from_buffer_copy(self.read(addr, ctypes.sizeof(cls)))

    # -- mm internals -------------------------------------------------------------------------------
    def _map_internal(self, size: int, prot: int, name: str, addr: int = 0) -> int:
        """A kernel-made anonymous mapping (stack, vDSO): no system call counted."""
        start = addr or self.mm.get_unmapped_area(0, size)
        vma = Vma(start, start + size, calc_vm_prot_bits(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC, name=name)
        self.mm.insert(vma)
        return start

    # do_mmap (mm/mmap.c) and mmap_region
    def do_mmap(
        self, thread: Thread, file: OpenFile | None, addr: int, length: int, prot: int,
        flags: int, pgoff: int,
    ) -> int:
        if not length:
            raise KernelError(errno.EINVAL)
        if prot & PROT_READ and self.personality & READ_IMPLIES_EXEC:
            prot |= PROT_EXEC
        if flags & MAP_FIXED_NOREPLACE:
            flags |= MAP_FIXED
        if not flags & MAP_FIXED:
            addr &= PAGE_MASK
            if addr and addr < MMAP_MIN_ADDR:
                addr = MMAP_MIN_ADDR  # round_hint_to_min
        size = page_align(length)
        if not size or length > (1 << 64) - PAGE_SIZE:
            raise KernelError(errno.ENOMEM)
        # __get_unmapped_area
        if size > TASK_SIZE:
            raise KernelError(errno.ENOMEM)
        if file is not None:
            addr = file.f_op.get_unmapped_area(file, thread, addr, size, pgoff, flags)
        elif not flags & MAP_FIXED:
            addr = self.mm.get_unmapped_area(addr, size)
        if addr > TASK_SIZE - size:
            raise KernelError(errno.ENOMEM)
        if addr & ~PAGE_MASK:
            raise KernelError(errno.EINVAL)
        if addr < MMAP_MIN_ADDR:
            raise KernelError(errno.EPERM)  # security_mmap_addr
        if flags & MAP_FIXED_NOREPLACE and self.mm.overlapping(addr, addr + size):
            raise KernelError(errno.EEXIST)
        vm_flags = calc_vm_prot_bits(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
        map_type = flags & MAP_TYPE
        if file is not None:
            if map_type in (MAP_SHARED, MAP_SHARED_VALIDATE):
                if prot & PROT_WRITE and not file.f_mode & FMODE_WRITE:
                    raise KernelError(errno.EACCES)
                vm_flags |= VM_SHARED | VM_MAYSHARE
                if not file.f_mode & FMODE_WRITE:
                    vm_flags &= ~(VM_MAYWRITE | VM_SHARED)
            elif map_type != MAP_PRIVATE:
                raise KernelError(errno.EINVAL)
            if not file.f_mode & FMODE_READ:
                raise KernelError(errno.EACCES)
            if file.path.startswith("/dev/") and self.machine.dev_noexec:  # path_noexec
                if vm_flags & VM_EXEC:
                    raise KernelError(errno.EPERM)
                vm_flags &= ~VM_MAYEXEC
            if not getattr(file.f_op, "can_mmap", True):
                raise KernelError(errno.ENODEV)
        elif map_type == MAP_SHARED:
            vm_flags |= VM_SHARED | VM_MAYSHARE
        elif map_type != MAP_PRIVATE:
            raise KernelError(errno.EINVAL)
        # mmap_region: the old mapping goes first (its PTEs are cleared even if mmap fails)
        self.do_munmap(addr, addr + size)
        vma = Vma(addr, addr + size, vm_flags, file.get() if file is not None else None, pgoff)
        vma.mm = self.mm
        if file is not None:
            try:
                file.f_op.mmap(file, vma, thread)
            except KernelError:
                file.put()
                raise
        self.mm.insert(vma)
        return addr

    def _has_ptes(self, start: int, end: int) -> bool:
        ptes = self.mm.mem.ptes
        first, last = start >> PAGE_SHIFT, end >> PAGE_SHIFT
        if last - first < len(ptes):
            return any(ptes.get(k) for k in range(first, last))
        return any(first <= k < last and v for k, v in ptes.items())

    def _split(self, vma: Vma, at: int) -> Vma:
        upper = self.mm.split(vma, at)
        if upper.file is not None:
            upper.file.get()
        if upper.ops is not None:
            upper.ops.open(upper)
        return upper

    # do_munmap / do_vmi_align_munmap (mm/vma.c)
    def do_munmap(self, start: int, end: int) -> None:
        victims = []
        for vma in self.mm.overlapping(start, end):
            if vma.start < start:
                vma = self._split(vma, start)
            if vma.end > end:
                self._split(vma, end)
            victims.append(vma)
        if not victims:
            return
        flush = any(self._has_ptes(v.start, v.end) for v in victims)
        for vma in victims:
            self.mm.remove(vma)
            self.mm.mem.unmap(vma.start, vma.end - vma.start)
        if flush:  # tlb_finish_mmu flushes only what was mapped
            self.machine.flush_tlb_mm(self)
        for vma in victims:
            if vma.file is not None:
                vma.file.put()

    # do_mprotect_pkey (mm/mprotect.c)
    def do_mprotect(self, start: int, length: int, prot: int) -> None:
        if start & ~PAGE_MASK:
            raise KernelError(errno.EINVAL)
        if not length:
            return
        end = start + page_align(length)
        if end <= start:
            raise KernelError(errno.ENOMEM)
        if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC):
            raise KernelError(errno.EINVAL)
        if prot & PROT_READ and self.personality & READ_IMPLIES_EXEC:
            prot |= PROT_EXEC
        vma = self.mm.find_vma(start)
        if vma is None or vma.start > start:
            raise KernelError(errno.ENOMEM)
        nstart = start
        changed = False
        try:
            while True:
                newflags = calc_vm_prot_bits(prot) | (vma.flags & ~VM_ACCESS_FLAGS)
                if (newflags & ~(newflags >> 4)) & VM_ACCESS_FLAGS:
                    raise KernelError(errno.EACCES)  # beyond VM_MAY*
                tmp = min(vma.end, end)
                if vma.ops is not None:
                    vma.ops.mprotect(vma, nstart, tmp, newflags)
                # mprotect_fixup
                if vma.start < nstart:
                    vma = self._split(vma, nstart)
                if vma.end > tmp:
                    self._split(vma, tmp)
                if vma.flags != newflags:
                    vma.flags = newflags
                    changed |= self._has_ptes(vma.start, vma.end)
                    self.mm.mem.protect(vma.start, vma.end - vma.start, vm_page_prot(vma, newflags))
                nstart = tmp
                if nstart >= end:
                    break
                nxt = self.mm.find_vma(nstart)
                if nxt is None or nxt.start != nstart:
                    raise KernelError(errno.ENOMEM)
                vma = nxt
        finally:
            if changed:
                self.machine.flush_tlb_mm(self)

    # -- exit -------------------------------------------------------------------------------------
    def exit(self) -> None:
        """do_exit: threads stop (an AEX if inside), then exit_mm, then exit_files."""
        if not self.alive:
            return
        m = self.machine
        for t in self.threads:
            while t.call is not None:
                m.abort_call(t.call)
        # exit_mmap: the mmu notifiers go first (sgx_mmu_notifier_release), then the VMAs.
        for encl in list(self.sgx_encl_mms):
            sgx_encl_mm_drop(m, encl, self)
        self.do_munmap(0, TASK_SIZE + PAGE_SIZE)
        self.alive = False
        for fd in sorted(self.fds):
            self.fds.pop(fd).put()
        for t in self.threads:
            close = getattr(t._engine, "close", None)
            if close is not None:
                close()  # e.g. the native engine lets go of its logical processor
        self.mm.mem.close()
        m.processes.pop(self.pid, None)
        m.kernel_exit(None)


# Last: vdso.py imports this module's VDSO_ENCLU (the package imports this module first).
from .vdso import EnclaveCall  # noqa: E402
