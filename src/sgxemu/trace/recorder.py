"""The event recorder: what happened, in order, between host, kernel, CPU and enclave threads.

A `Tracer` is attached to a machine (`tracer.attach(machine)` sets `machine.tracer` and
`machine.cpu.tracer`) or to a bare processor (`attach_cpu`). The model then reports to it:

- system calls (`Thread._syscall`): host -> kernel, and the return (value or errno);
- every ENCLS leaf (`Processor.encls`): kernel -> CPU, with RAX or the fault, and the EPCM entry
  of the target page afterwards (EADD, EAUG, EMODPR, EMODT, ELDU, EWB...);
- every ENCLU leaf (`Processor.enclu`): EENTER/ERESUME host -> CPU -> enclave thread, in-enclave
  leaves enclave thread -> CPU, EEXIT enclave thread -> CPU -> host;
- every AEX (`hw.enclu.aex`): enclave thread -> CPU, with the exception;
- user page faults on enclave memory (`do_user_addr_fault`): -> kernel, with the outcome
  (handled: the access is retried, or the signal the vDSO turns into an exception report);
- the end of each vDSO call (`EnclaveCall._finish`): its return value and `sgx_enclave_run`.

The recorder keeps raw facts (`Event.data`) and a short label for the diagram; `diagram.py`
turns the events into steps. A scenario may call `tracer.begin(title)` once its setup is done:
the "before" EPC snapshot is taken there, and the diagram folds everything earlier into one line.
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .. import uapi
from ..arch.constants import EnclsLeaf, EncluLeaf, PageType, PfErrorCode, SgxError, Vector
from ..hw.faults import PageFault, SgxFault
from ..hw.regs import Reg
from .snapshot import EnclaveView, EpcSnapshot, page_view, rights, snapshot, snapshot_cpu

if TYPE_CHECKING:
    from ..hw.leaves import EnclsFn, EncluFn
    from ..hw.lp import LogicalProcessor
    from ..hw.memory import AddressSpace
    from ..hw.processor import Processor
    from ..hw.regs import RegisterFile
    from ..linux.errors import Signal
    from ..linux.machine import Machine
    from ..linux.process import Thread
    from ..linux.tracehook import FaultFn
    from ..linux.vdso import EnclaveCall

_T = TypeVar("_T")

HOST, KERNEL, CPU = "host", "kernel", "cpu"

# ENCLS leaves whose target page's EPCM entry is worth showing after the leaf.
_SHOW_ENTRY = {
    int(EnclsLeaf.EADD), int(EnclsLeaf.EAUG), int(EnclsLeaf.EMODPR), int(EnclsLeaf.EMODT),
    int(EnclsLeaf.ELDU), int(EnclsLeaf.ELDB), int(EnclsLeaf.EBLOCK),
}
_EVICTING = {int(EnclsLeaf.EWB), int(EnclsLeaf.EREMOVE)}
_ENTERING = {int(EncluLeaf.EENTER), int(EncluLeaf.ERESUME)}
_PAGE_LEAVES = {int(EncluLeaf.EACCEPT), int(EncluLeaf.EMODPE), int(EncluLeaf.EACCEPTCOPY)}

_IOCTL_NAMES = {
    getattr(uapi, n) & 0xFFFF_FFFF: n[len("SGX_IOC_"):]
    for n in dir(uapi)
    if n.startswith("SGX_IOC_") and isinstance(getattr(uapi, n), int)
}
# Fields of the ioctl structs that are host pointers or outputs: not shown with the arguments.
_HIDDEN_FIELDS = {"src", "secinfo", "sigstruct", "count", "result", "reserved"}
_OUT_FIELDS = ("count", "result")


def leaf_name(table: type[EnclsLeaf] | type[EncluLeaf], leaf: int) -> str:
    try:
        return table(leaf).name
    except ValueError:
        return f"leaf {leaf:#x}"


def sgx_error_name(code: int) -> str:
    if code == 0:
        return "0"
    try:
        return SgxError(code).name
    except ValueError:
        return f"{code:#x}"


def pf_bits(error_code: int) -> str:
    names = [b.name for b in PfErrorCode if b.name and error_code & b]
    return "|".join(names) if names else "0"


def fault_name(fault: SgxFault) -> str:
    try:
        vec = Vector(int(fault.vector)).name
    except ValueError:
        vec = str(int(fault.vector))
    if isinstance(fault, PageFault):
        return f"#PF {fault.error_code:#x} ({pf_bits(fault.error_code)})"
    return f"#{vec}"


@dataclass
class Event:
    """One recorded step. `src`/`dst` are participant ids: host, kernel, cpu or a thread lane."""

    seq: int
    kind: str
    src: str
    dst: str
    label: str
    result: str = ""
    error: bool = False
    phase: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "kind": self.kind, "src": self.src, "dst": self.dst,
            "label": self.label, "result": self.result, "error": self.error,
            "phase": self.phase, "data": self.data,
        }


@dataclass
class Lane:
    """A participant of the diagram."""

    id: str
    title: str
    subtitle: str = ""

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "subtitle": self.subtitle}


def _closure_args(fn: Callable[..., Any]) -> dict[str, Any]:
    """The arguments a system call's body closes over (its free variables), minus `self`."""
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None) or ()
    out: dict[str, Any] = {}
    if code is None:
        return out
    for name, cell in zip(code.co_freevars, cells, strict=False):
        if name in ("self", "body"):
            continue
        try:
            out[name] = cell.cell_contents
        except ValueError:
            continue
    return out


class Tracer:
    """Records events from a machine (or a bare processor). See the module docstring."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lanes: dict[str, Lane] = {
            HOST: Lane(HOST, "host", "process"),
            KERNEL: Lane(KERNEL, "kernel", "SGX driver"),
            CPU: Lane(CPU, "CPU", "ENCLS/ENCLU"),
        }
        self.enclaves: dict[int, EnclaveView] = {}
        self.machine: Machine | None = None
        self.cpu: Processor | None = None
        self.before: EpcSnapshot | None = None
        self.after: EpcSnapshot | None = None
        self.phase = 0
        self.phases: list[str] = ["setup"]
        self.begun = False
        self.hidden_faults = 0  # demand paging of ordinary memory: counted, not shown
        self.host_threads: set[tuple[int, int]] = set()
        self._syscall_depth = 0
        self._fault_depth = 0
        # LPs whose last ENCLU faulted ("enclu") or took an exception AEX ("aex").
        self._exception_pending: dict[int, str] = {}

    # -- attaching ------------------------------------------------------------------------------
    def attach(self, machine: Machine) -> Tracer:
        """Record `machine` (its kernel and its processor) from now on."""
        self.machine = machine
        self.cpu = machine.cpu
        machine.tracer = self
        machine.cpu.tracer = self
        self._learn_enclaves()
        self.before = self.take_snapshot("before")
        return self

    def attach_cpu(self, cpu: Processor) -> Tracer:
        """Record a bare processor (leafkit, engines without a kernel)."""
        self.cpu = cpu
        cpu.tracer = self
        self._learn_enclaves()
        self.before = self.take_snapshot("before")
        return self

    def detach(self) -> None:
        """Stop recording; the "after" snapshot is taken now."""
        self.after = self.take_snapshot("after")
        if self.machine is not None and self.machine.tracer is self:
            self.machine.tracer = None
        if self.cpu is not None and self.cpu.tracer is self:
            self.cpu.tracer = None

    def take_snapshot(self, label: str) -> EpcSnapshot:
        if self.machine is not None:
            return snapshot(self.machine, label, self.enclaves.values())
        assert self.cpu is not None, "the tracer is not attached"
        return snapshot_cpu(self.cpu, label)

    # -- scenario markers -------------------------------------------------------------------------
    def begin(self, title: str) -> None:
        """The setup is done: take the "before" snapshot and start the part worth showing."""
        self.before = self.take_snapshot("before")
        self.begun = True
        self.section(title)

    def section(self, title: str) -> None:
        """Start a new titled part of the flow."""
        self.phase += 1
        self.phases.append(title)
        self._add("phase", HOST, HOST, title)

    def note(self, text: str, lane: str = HOST) -> None:
        """A remark on one lifeline."""
        self._add("note", lane, lane, text)

    # -- helpers ----------------------------------------------------------------------------------
    def _add(
        self, kind: str, src: str, dst: str, label: str, result: str = "", error: bool = False,
        **data: Any,
    ) -> Event:
        ev = Event(len(self.events), kind, src, dst, label, result, error, self.phase, data)
        self.events.append(ev)
        return ev

    def _learn_enclaves(self) -> None:
        if self.cpu is not None:
            for s in self.cpu.enclaves():
                self.enclaves.setdefault(s.eid, EnclaveView(s.eid, s.baseaddr, s.size))

    def addr(self, a: int) -> str:
        """An address, relative to the enclave whose ELRANGE holds it when there is one."""
        for e in self.enclaves.values():
            if e.base <= a < e.base + e.size:
                name = "encl" if len(self.enclaves) == 1 else f"encl{e.eid}"
                return f"{name}+{a - e.base:#x}"
        return f"{a:#x}"

    def thread_lane(self, lp: LogicalProcessor) -> str:
        secs = lp.secs
        eid = secs.eid if secs is not None else 0
        lane_id = f"encl{eid}:{lp.tcs_lin:#x}"
        if lane_id not in self.lanes:
            n = sum(1 for lane in self.lanes if lane.startswith("encl"))
            tcs = self.addr(lp.tcs_lin).replace("encl+", "+")
            self.lanes[lane_id] = Lane(lane_id, f"enclave T{n}", f"TCS {tcs}")
        return lane_id

    def _host(self, thread: Thread | None) -> dict[str, Any]:
        if thread is None:
            return {}
        key = (thread.process.pid, thread.tid)
        self.host_threads.add(key)
        return {"pid": key[0], "tid": key[1]}

    def _describe_epc(self, cpu: Processor, pa: int) -> tuple[str, dict[str, Any]]:
        """The page an ENCLS targets (by RCX, its EPC address): a label and the raw entry."""
        index = cpu.epc.index(pa)
        if index < 0:
            return f"{pa:#x}", {"pa": pa}
        entry = cpu.epcm.get(index)
        if entry is None:
            return f"EPC {index}", {"epc_index": index}
        view = page_view(index, entry)
        if view.type in ("SECS", "VA"):
            return f"{view.type} (EPC {index})", {"epc_index": index, "page": view.to_json()}
        assert view.linaddr is not None
        return self.addr(view.linaddr), {"epc_index": index, "page": view.to_json()}

    @staticmethod
    def _entry_text(cpu: Processor, pa: int) -> str:
        index = cpu.epc.index(pa)
        entry = cpu.epcm.get(index) if index >= 0 else None
        if entry is None:
            return "free"
        view = page_view(index, entry)
        return " ".join([view.type, view.rights, *view.flags]) if view.type not in ("SECS", "VA") else view.type

    def _entry_at(self, lp: LogicalProcessor, lin: int) -> str:
        """The EPCM entry of an enclave's page at a linear address (after an in-enclave leaf)."""
        cpu = self.cpu
        if cpu is None or lp.secs is None:
            return ""
        page = lin & ~0xFFF
        for entry in cpu.epcm.values():
            if entry.secs is lp.secs and entry.linaddr == page and int(entry.pt) != int(PageType.PT_SECS):
                flags = [n for n in ("pending", "modified", "pr", "blocked") if getattr(entry, n)]
                return " ".join([entry.pt.name[3:], rights(entry.perms), *(f.upper() for f in flags)])
        return ""

    # -- CpuTracer ------------------------------------------------------------------------------
    def encls(
        self, cpu: Processor, leaf: int, rbx: int, rcx: int, rdx: int, mem: AddressSpace,
        fn: EnclsFn,
    ) -> int:
        name = leaf_name(EnclsLeaf, leaf)
        target, data = self._describe_epc(cpu, rcx)
        context = "" if self._syscall_depth or self._fault_depth else "ksgxd: "
        data.update(leaf=name, rbx=rbx, rcx=rcx, rdx=rdx, context=context.strip(": ") or None)
        try:
            ret = fn(cpu, mem, rbx, rcx, rdx)
        except SgxFault as fault:
            result, error = fault_name(fault), True
            page = data.get("page") or {}
            if leaf == EnclsLeaf.EMODPR and isinstance(fault, PageFault) and page.get("type") == "TRIM":
                # sgx_encl_remove_pages: EMODPR faults on an accepted TRIM page, as intended.
                result, error = "#PF: an accepted TRIM page (REMOVE_PAGES' check)", False
            self._add("encls", KERNEL, CPU, f"{context}ENCLS[{name}] {target}", result, error,
                      fault=fault_name(fault), **data)
            raise
        result = sgx_error_name(ret)
        if not ret and leaf not in _EVICTING:
            target, more = self._describe_epc(cpu, rcx)  # the page as the leaf left it
            data.update(more)
        if leaf == EnclsLeaf.ECREATE and not ret:
            s = cpu.secs_of(cpu.epc.index(rcx))
            if s is not None:
                self.enclaves[s.eid] = EnclaveView(s.eid, s.baseaddr, s.size)
                target = f"SECS (EPC {s.index}): ELRANGE {s.baseaddr:#x}+{s.size:#x}"
        if not ret and leaf in _SHOW_ENTRY:
            result += " · " + self._entry_text(cpu, rcx)
        elif not ret and leaf in _EVICTING:
            result += " · " + ("evicted" if leaf == EnclsLeaf.EWB else "free")
        self._add("encls", KERNEL, CPU, f"{context}ENCLS[{name}] {target}", result, bool(ret),
                  rax=ret, **data)
        return ret

    def enclu(
        self, cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, mem: AddressSpace,
        fn: EncluFn,
    ) -> None:
        leaf = regs[Reg.RAX] & 0xFFFF_FFFF
        name = leaf_name(EncluLeaf, leaf)
        rbx, rcx, rdx = regs[Reg.RBX], regs[Reg.RCX], regs[Reg.RDX]
        data: dict[str, Any] = {"leaf": name, "lp": lp.index, "rbx": rbx, "rcx": rcx, "rdx": rdx}
        if leaf in _ENTERING:
            label = f"ENCLU[{name}] TCS {self.addr(rbx)}"
            try:
                fn(cpu, lp, regs, mem)
            except SgxFault as fault:
                self._exception_pending[lp.index] = "enclu"
                self._add("enclu", HOST, CPU, label, fault_name(fault), True,
                          fault=fault_name(fault), **data)
                raise
            lane = self.thread_lane(lp)
            self._add("enclu", HOST, CPU, label, **data)
            if leaf == EncluLeaf.EENTER:
                self._add("enter", CPU, lane, f"enters at OENTRY (CSSA {regs[Reg.RAX]})", lp=lp.index)
            else:
                self._add("enter", CPU, lane, "resumes from the SSA", lp=lp.index)
            return
        lane = self.thread_lane(lp)
        if leaf == EncluLeaf.EEXIT:
            fn(cpu, lp, regs, mem)
            self._add("enclu", lane, CPU, f"ENCLU[{name}]", **data)
            self._add("exit", CPU, HOST, "exits to the host", lp=lp.index, target=rbx)
            return
        target = ""
        if leaf in _PAGE_LEAVES:
            target = " " + self.addr(rcx)  # the page: EACCEPT, EMODPE, EACCEPTCOPY's destination
        label = f"ENCLU[{name}]{target}"
        try:
            fn(cpu, lp, regs, mem)
        except SgxFault as fault:
            self._add("enclu", lane, CPU, label, fault_name(fault), True, fault=fault_name(fault), **data)
            raise
        rax = regs[Reg.RAX]
        result = sgx_error_name(rax) if leaf in _PAGE_LEAVES or leaf in (EncluLeaf.EGETKEY,) else ""
        error = bool(result not in ("", "0"))
        if leaf in _PAGE_LEAVES and not error:
            entry = self._entry_at(lp, rcx)
            if entry:
                result += " · " + entry
        self._add("enclu", lane, CPU, label, result, error, rax=rax, **data)

    def aex(
        self, cpu: Processor, lp: LogicalProcessor, regs: RegisterFile, event: SgxFault | None
    ) -> None:
        lane = self.thread_lane(lp)
        data: dict[str, Any] = {"lp": lp.index, "rip": regs[Reg.RIP]}
        if event is None:
            self._add("aex", lane, CPU, "AEX: interrupt", "", False, **data)
            return
        self._exception_pending[lp.index] = "aex"
        what = fault_name(event)
        if isinstance(event, PageFault):
            what += f" at {self.addr(event.addr)}"
            data["addr"] = event.addr
        data.update(vector=int(event.vector), error_code=event.error_code)
        self._add("aex", lane, CPU, f"AEX: {what}", "", True, **data)

    # -- KernelTracer ---------------------------------------------------------------------------
    def syscall(self, thread: Thread, name: str, fn: Callable[[], _T]) -> Callable[[], _T]:
        args = _closure_args(fn)
        host = self._host(thread)

        def traced() -> _T:
            from ..linux.errors import KernelError, user_errno

            label, shown = self._syscall_label(name, args)
            self._add("syscall", HOST, KERNEL, label, syscall=name, args=shown, **host)
            self._syscall_depth += 1
            try:
                ret = fn()
            except KernelError as e:
                code = user_errno(e.errno)
                text = f"-1 {errno_mod.errorcode.get(code, str(code))}"
                self._add("sysret", KERNEL, HOST, f"{name} = {text}", text, True, syscall=name,
                          errno=code, **host)
                raise
            except BaseException as e:
                self._add("sysret", KERNEL, HOST, f"{name}: {type(e).__name__}", type(e).__name__,
                          True, syscall=name, **host)
                raise
            finally:
                self._syscall_depth -= 1
            text = self._syscall_result(name, ret, args)
            self._add("sysret", KERNEL, HOST, f"{name} = {text}", text, False, syscall=name,
                      value=ret if isinstance(ret, int) else None, **host)
            return ret

        return traced

    def _syscall_label(self, name: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        shown: dict[str, Any] = {}
        if name == "ioctl":
            request = int(args.get("request", 0)) & 0xFFFF_FFFF
            req_name = _IOCTL_NAMES.get(request, f"{request:#x}")
            parts = [f"fd {args.get('fd')}", req_name]
            shown = {"fd": args.get("fd"), "request": req_name}
            arg = args.get("arg")
            fields = getattr(arg, "_fields_", None)
            if fields:
                for fname, *_ in fields:
                    if fname in _HIDDEN_FIELDS:
                        continue
                    value = getattr(arg, fname)
                    if isinstance(value, int):
                        shown[fname] = value
                        parts.append(f"{fname}={value:#x}")
            elif isinstance(arg, int):
                parts.append(f"arg={arg:#x}")
            return f"ioctl({', '.join(parts)})", shown
        if name == "mmap":
            addr, length = int(args.get("addr", 0)), int(args.get("length", 0))
            prot, flags, fd = int(args.get("prot", 0)), int(args.get("flags", 0)), args.get("fd", -1)
            shown = {"addr": addr, "length": length, "prot": prot, "flags": flags, "fd": fd}
            where = self.addr(addr) if addr else "NULL"
            fd_text = f", fd {fd}" if not flags & 0x20 else ""
            return f"mmap({where}, {length:#x}, {_prot(prot)}, {_map_flags(flags)}{fd_text})", shown
        if name in ("munmap", "mprotect"):
            addr, length = int(args.get("addr", 0)), int(args.get("length", 0))
            shown = {"addr": addr, "length": length}
            extra = ""
            if name == "mprotect":
                shown["prot"] = int(args.get("prot", 0))
                extra = f", {_prot(shown['prot'])}"
            return f"{name}({self.addr(addr)}, {length:#x}{extra})", shown
        if name == "open":
            shown = {"path": args.get("path"), "flags": args.get("flags")}
            return f'open("{args.get("path")}")', shown
        if name == "close":
            shown = {"fd": args.get("fd")}
            return f"close({args.get('fd')})", shown
        shown = {k: v for k, v in args.items() if isinstance(v, int | str)}
        return f"{name}({', '.join(f'{k}={v}' for k, v in shown.items())})", shown

    def _syscall_result(self, name: str, ret: Any, args: dict[str, Any]) -> str:
        if name == "mmap" and isinstance(ret, int):
            return self.addr(ret)
        text = str(ret) if ret is not None else "0"
        arg = args.get("arg")
        fields = getattr(arg, "_fields_", None)
        if name == "ioctl" and fields:
            names = {f[0] for f in fields}
            outs = [f"{f}={getattr(arg, f):#x}" for f in _OUT_FIELDS if f in names]
            if outs:
                text += f" ({', '.join(outs)})"
        return text

    def user_fault(
        self, m: Machine, thread: Thread, addr: int, error_code: int, fn: FaultFn
    ) -> Signal | None:
        host = self._host(thread)
        how = self._exception_pending.pop(thread.lp, None)
        from_cpu = how is not None
        src = CPU if from_cpu else (KERNEL if self._syscall_depth else HOST)
        vma = thread.process.mm.vma_lookup(addr)
        enclave = vma is not None and vma.private is not None
        mark = len(self.events)
        ev = self._add("fault", src, KERNEL, f"#PF {error_code:#x} ({pf_bits(error_code)}) at "
                       f"{self.addr(addr)}: do_user_addr_fault", addr=addr, error_code=error_code, **host)
        self._fault_depth += 1
        try:
            sig = fn(m, thread, addr, error_code)
        finally:
            self._fault_depth -= 1
        if not (from_cpu or enclave or sig is not None) and len(self.events) == mark + 1:
            self.events.pop()  # demand paging of ordinary memory: not part of the SGX flow
            self.hidden_faults += 1
            return sig
        ev.data["enclave"] = enclave
        back = HOST if src != KERNEL else KERNEL
        if sig is None:
            text = {
                "aex": "handled: ERESUME at the AEP", "enclu": "handled: the vDSO retries ENCLU",
            }.get(how or "", "handled: the access is retried")
            self._add("fault_end", KERNEL, back, text, "", False, **host)
        else:
            what = f"{type(sig).__name__} (code {sig.code})"
            text = f"{what}: the vDSO reports the exception" if from_cpu else what
            self._add("fault_end", KERNEL, back, text, "", True, signal=type(sig).__name__,
                      code=sig.code, **host)
        return sig

    def vdso_return(self, call: EnclaveCall, result: int) -> None:
        run = call.run
        host = self._host(call.thread)
        try:
            fn_name = EncluLeaf(run.function).name
        except ValueError:
            fn_name = str(run.function)
        text = f"vDSO returns {result}: run.function={fn_name}"
        if run.exception_vector or run.exception_error_code or run.exception_addr:
            text += (f", exception {run.exception_vector} ({run.exception_error_code:#x}) at "
                     f"{self.addr(run.exception_addr)}")
        self._add("vdso_return", HOST, HOST, text, str(result), result < 0, value=result,
                  function=fn_name, exception_vector=run.exception_vector,
                  exception_error_code=run.exception_error_code,
                  exception_addr=run.exception_addr, **host)

    # -- output ---------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "participants": [lane.to_json() for lane in self.lanes.values()],
            "phases": self.phases,
            "events": [e.to_json() for e in self.events],
            "hidden_faults": self.hidden_faults,
            "epc": {
                "before": self.before.to_json() if self.before else None,
                "after": self.after.to_json() if self.after else None,
            },
        }


def _prot(prot: int) -> str:
    if not prot & 7:
        return "PROT_NONE"
    return "".join(c if prot & b else "-" for c, b in (("R", 1), ("W", 2), ("X", 4)))


def _map_flags(flags: int) -> str:
    names = [n for n, b in (("SHARED", 0x1), ("PRIVATE", 0x2), ("FIXED", 0x10), ("ANON", 0x20))
             if flags & b]
    return "|".join(names) if names else f"{flags:#x}"


def errno_text(code: int) -> str:
    return f"{errno_mod.errorcode.get(code, code)} ({os.strerror(code)})"
