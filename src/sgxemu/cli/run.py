"""`sgxemu run`: load, sign, initialize and call an enclave that speaks the selftest protocol."""

from __future__ import annotations

import ctypes
import errno
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from .errors import CliError, UsageLineError, emit_json, parse_size
from .selftest import _check_kernel
from .sign import load_image, parse_base, read_key, relocations_option

if TYPE_CHECKING:
    from ..linux.load import LoadedEnclave
    from ..linux.process import Process
    from ..loader.selftest_layout import EnclaveImage

PAGE = 4096
_FLAG_NAMES = {
    "R": 0x1, "W": 0x2, "X": 0x4, "PENDING": 0x8, "MODIFIED": 0x10, "PR": 0x20,
    "SECS": 0x000, "TCS": 0x100, "REG": 0x200, "VA": 0x300, "TRIM": 0x400,
}
_TYPE_NAMES = {"SECS": 0, "TCS": 1, "REG": 2, "VA": 3, "TRIM": 4}
_LEAVES = {2: "EENTER", 3: "ERESUME", 4: "EEXIT"}
_VECTORS = {0: "#DE", 1: "#DB", 3: "#BP", 5: "#BR", 6: "#UD", 7: "#NM", 13: "#GP", 14: "#PF",
            16: "#MF", 17: "#AC", 19: "#XM", 21: "#CP"}

# op name -> its argument names (ADDR: enclave offset or symbol[+off]).
OPS: dict[str, tuple[str, ...]] = {
    "nop": (),
    "put": ("VALUE",),
    "get": (),
    "put-addr": ("ADDR", "VALUE"),
    "get-addr": ("ADDR",),
    "eaccept": ("ADDR", "FLAGS"),
    "emodpe": ("ADDR", "FLAGS"),
    "resume": (),
    "tcs": ("N",),
    "mmap": ("ADDR", "SIZE"),
    "restrict": ("ADDR", "SIZE", "FLAGS"),
    "modt": ("ADDR", "SIZE", "TYPE"),
    "remove": ("ADDR", "SIZE"),
}

OP_HELP = """\b
Ops, run in order (ADDR is an offset into the enclave, or a symbol of the
ELF with an optional +/-offset, e.g. encl_buffer+0x1000; numbers in any base):
  nop                     ENCL_OP_NOP
  put:VALUE               ENCL_OP_PUT_TO_BUFFER
  get                     ENCL_OP_GET_FROM_BUFFER (prints the value)
  put-addr:ADDR:VALUE     ENCL_OP_PUT_TO_ADDRESS
  get-addr:ADDR           ENCL_OP_GET_FROM_ADDRESS (prints the value)
  eaccept:ADDR:FLAGS      ENCL_OP_EACCEPT (prints EACCEPT's return code)
  emodpe:ADDR:FLAGS       ENCL_OP_EMODPE
  resume                  ERESUME the last call through this TCS (after an AEX)
  tcs:N                   enter through TCS N from now on
  mmap:ADDR:SIZE          map more of ELRANGE (RW, MAP_SHARED|MAP_FIXED)
  restrict:ADDR:SIZE:FLAGS  SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS
  modt:ADDR:SIZE:TYPE     SGX_IOC_ENCLAVE_MODIFY_TYPES (TYPE: TCS or TRIM)
  remove:ADDR:SIZE        SGX_IOC_ENCLAVE_REMOVE_PAGES
FLAGS: a number or names joined by + or |: R W X PENDING MODIFIED PR and a
page type SECS TCS REG VA TRIM, e.g. R+W+REG+PENDING or TRIM+MODIFIED.
"""


@dataclass
class Op:
    text: str
    name: str
    args: list[str]


def _bad(text: str, problem: str) -> UsageLineError:
    return UsageLineError(f"--op {text!r}: {problem}", "see 'sgxemu run --help' for the op syntax")


def parse_op(text: str) -> Op:
    name, *args = text.strip().split(":")
    name = name.lower()
    if name not in OPS:
        return_names = ", ".join(OPS)
        raise _bad(text, f"unknown op {name!r} (ops: {return_names})")
    want = OPS[name]
    if len(args) != len(want):
        form = ":".join((name, *want))
        raise _bad(text, f"{name} takes {len(want)} argument(s): {form}")
    return Op(text, name, args)


def _int(text: str, op: Op, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise _bad(op.text, f"{what} {text!r} is not a number") from None


def _flags(text: str, op: Op, names: dict[str, int], what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        pass
    value = 0
    for part in re.split(r"[+|,]", text):
        key = part.strip().upper()
        if key not in names:
            raise _bad(op.text, f"{what} {part!r} is not one of {' '.join(names)}")
        value |= names[key]
    return value


def _offset(text: str, op: Op, image: EnclaveImage) -> int:
    """ADDR: an enclave offset, or symbol[+-offset]."""
    m = re.fullmatch(r"([A-Za-z_.$][\w.$]*)\s*(?:([+-])\s*(\w+))?", text.strip())
    if m is None or re.fullmatch(r"0[xXoObB][0-9a-fA-F_]+|\d+", text.strip()):
        return _int(text, op, "ADDR")
    try:
        value = image.symbol(m.group(1))
    except KeyError:
        raise _bad(op.text, f"no symbol {m.group(1)!r} in {image.path.name}") from None
    if m.group(2):
        delta = _int(m.group(3), op, "offset")
        value += delta if m.group(2) == "+" else -delta
    return value


_CALLS = ("nop", "put", "get", "put-addr", "get-addr", "eaccept", "emodpe", "resume")


def check_ops(ops: list[Op], image: EnclaveImage, tcs: int) -> None:
    """Every argument resolves and every TCS and `resume` makes sense, before anything runs."""
    ntcs = image.segments[0].size // PAGE
    if not 0 <= tcs < ntcs:
        raise CliError(f"TCS {tcs} does not exist: the enclave has {ntcs} (0..{ntcs - 1})", "pick --tcs from that range")
    called: set[int] = set()
    for op in ops:
        for kind, text in zip(OPS[op.name], op.args, strict=True):
            if kind == "ADDR":
                _offset(text, op, image)
            elif kind in ("FLAGS", "TYPE"):
                _flags(text, op, _FLAG_NAMES if kind == "FLAGS" else _TYPE_NAMES, kind)
            else:
                _int(text, op, kind)
        if op.name == "tcs":
            n = _int(op.args[0], op, "N")
            if not 0 <= n < ntcs:
                raise _bad(op.text, f"TCS {n} does not exist: the enclave has {ntcs} (0..{ntcs - 1})")
            tcs = n
        elif op.name == "resume" and tcs not in called:
            raise _bad(op.text, f"nothing to resume: no enclave call through TCS {tcs} before it")
        elif op.name in _CALLS:
            called.add(tcs)


def _exception(run: Any) -> dict[str, Any] | None:
    if not run.exception_vector and not run.exception_error_code and not run.exception_addr:
        return None
    return {
        "vector": int(run.exception_vector),
        "name": _VECTORS.get(int(run.exception_vector), "?"),
        "error_code": int(run.exception_error_code),
        "address": int(run.exception_addr),
        "function": _LEAVES.get(int(run.function), str(int(run.function))),
    }


class Runner:
    """One process with the enclave built and mapped: runs ops, records what came back."""

    def __init__(self, proc: Process, encl: LoadedEnclave, tcs_index: int) -> None:
        from .. import uapi

        self.proc = proc
        self.encl = encl
        self.image = encl.image
        self.ntcs = self.image.segments[0].size // PAGE
        self.run = uapi.sgx_enclave_run()
        self.tcs_index = 0
        self.set_tcs(tcs_index, None)
        self.op_addr = proc.alloc(PAGE)
        self.last: dict[int, ctypes.Structure] = {}  # per TCS: what `resume` re-enters with

    def set_tcs(self, n: int, op: Op | None) -> None:
        if not 0 <= n < self.ntcs:
            problem = f"TCS {n} does not exist: the enclave has {self.ntcs} (0..{self.ntcs - 1})"
            if op is None:
                raise CliError(problem, "pick --tcs from that range")
            raise _bad(op.text, problem)
        self.tcs_index = n
        self.run.tcs = self.encl.base + self.image.tcs_offset + n * PAGE

    def _enter(self, op: ctypes.Structure, leaf: int) -> tuple[int, ctypes.Structure]:
        self.run.exception_vector = 0
        self.run.exception_error_code = 0
        self.run.exception_addr = 0
        self.proc.write(self.op_addr, bytes(op))
        ret = self.proc.vdso_sgx_enter_enclave(self.op_addr, 0, 0, leaf, 0, 0, self.run)
        back = type(op).from_buffer_copy(self.proc.read(self.op_addr, ctypes.sizeof(op)))
        return ret, back

    def _ioctl(self, request: int, arg: ctypes.Structure) -> dict[str, Any]:
        try:
            ret = self.proc.ioctl(self.encl.fd, request, arg)
        except OSError as exc:
            code = exc.errno or 0
            return {"ret": -1, "errno": errno.errorcode.get(code, str(code)), **_fields(arg)}
        return {"ret": ret, **_fields(arg)}

    def do(self, op: Op) -> dict[str, Any]:
        from .. import uapi
        from ..testenclave import protocol as P

        out: dict[str, Any] = {"op": op.text}
        a = op.args
        base = self.encl.base
        if op.name == "tcs":
            self.set_tcs(_int(a[0], op, "N"), op)
            out["tcs"] = self.tcs_index
            return out
        if op.name == "mmap":
            off, size = _offset(a[0], op, self.image), _int(a[1], op, "SIZE")
            try:
                from ..linux.mman import MAP_FIXED, MAP_SHARED, PROT_READ, PROT_WRITE

                addr = self.proc.mmap(base + off, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, self.encl.fd, 0)
                out.update(ret=0, address=addr)
            except OSError as exc:
                out.update(ret=-1, errno=errno.errorcode.get(exc.errno or 0, str(exc.errno)))
            return out
        if op.name in ("restrict", "modt", "remove"):
            off, size = _offset(a[0], op, self.image), _int(a[1], op, "SIZE")
            arg: ctypes.Structure
            if op.name == "restrict":
                arg = uapi.sgx_enclave_restrict_permissions(off, size, _flags(a[2], op, _FLAG_NAMES, "FLAGS"))
                request = uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS
            elif op.name == "modt":
                arg = uapi.sgx_enclave_modify_types(off, size, _flags(a[2], op, _TYPE_NAMES, "TYPE"))
                request = uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES
            else:
                arg = uapi.sgx_enclave_remove_pages(off, size)
                request = uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES
            out.update(self._ioctl(request, arg))
            return out

        leaf = uapi.EENTER
        call: ctypes.Structure
        if op.name == "resume":
            last = self.last.get(self.tcs_index)
            if last is None:
                raise _bad(op.text, f"nothing to resume: no enclave call through TCS {self.tcs_index} before it")
            call, leaf = last, uapi.ERESUME
        elif op.name == "nop":
            call = P.encl_op_header(P.ENCL_OP_NOP)
        elif op.name == "put":
            call = P.encl_op_put_to_buf(P.encl_op_header(P.ENCL_OP_PUT_TO_BUFFER), _int(a[0], op, "VALUE"))
        elif op.name == "get":
            call = P.encl_op_get_from_buf(P.encl_op_header(P.ENCL_OP_GET_FROM_BUFFER), 0)
        elif op.name == "put-addr":
            addr = base + _offset(a[0], op, self.image)
            call = P.encl_op_put_to_addr(P.encl_op_header(P.ENCL_OP_PUT_TO_ADDRESS), _int(a[1], op, "VALUE"), addr)
        elif op.name == "get-addr":
            addr = base + _offset(a[0], op, self.image)
            call = P.encl_op_get_from_addr(P.encl_op_header(P.ENCL_OP_GET_FROM_ADDRESS), 0, addr)
        elif op.name == "eaccept":
            addr = base + _offset(a[0], op, self.image)
            call = P.encl_op_eaccept(P.encl_op_header(P.ENCL_OP_EACCEPT), addr, _flags(a[1], op, _FLAG_NAMES, "FLAGS"), 0)
        else:  # emodpe
            addr = base + _offset(a[0], op, self.image)
            call = P.encl_op_emodpe(P.encl_op_header(P.ENCL_OP_EMODPE), addr, _flags(a[1], op, _FLAG_NAMES, "FLAGS"))
        self.last[self.tcs_index] = call
        out.update(tcs=self.tcs_index, leaf=_LEAVES[leaf])
        ret, back = self._enter(call, leaf)
        out.update(ret=ret, function=_LEAVES.get(int(self.run.function), str(int(self.run.function))))
        out["exception"] = _exception(self.run)
        if ret == 0 and self.run.function == uapi.EEXIT:  # the enclave wrote its answer back
            if isinstance(back, (P.encl_op_get_from_buf, P.encl_op_get_from_addr)):
                out["value"] = int(back.value)
            if isinstance(back, P.encl_op_eaccept):
                out["eaccept_ret"] = _sgx_code(int(back.ret))
        return out


def _einit_identity(proc: Process, encl: LoadedEnclave) -> tuple[bytes, bytes] | None:
    """MRENCLAVE and MRSIGNER from the processor's SECS after EINIT (None if evicted)."""
    page = proc.fds[encl.fd].private_data.secs.epc_page
    secs = proc.machine.cpu.secs_of(page.index) if page is not None else None
    return (secs.mrenclave, secs.mrsigner) if secs is not None else None


def _fields(arg: ctypes.Structure) -> dict[str, Any]:
    names = [f[0] for f in arg._fields_]
    return {n: int(getattr(arg, n)) for n in names if n in ("result", "count")}


def _sgx_code(value: int) -> str:
    from ..arch.constants import SgxError

    value &= 0xFFFF_FFFF
    try:
        return SgxError(value).name
    except ValueError:
        return f"{value:#x}"


def _prot(prot: int) -> str:
    return "".join(c if prot & b else "-" for c, b in (("R", 1), ("W", 2), ("X", 4)))


def _describe(r: dict[str, Any]) -> str:
    parts = []
    if "value" in r:
        parts.append(f"value {r['value']:#x}")
    if "eaccept_ret" in r:
        parts.append(f"EACCEPT {r['eaccept_ret']}")
    if "address" in r:
        parts.append(f"mapped at {r['address']:#x}")
    if "errno" in r:
        parts.append(f"errno {r['errno']}")
    for k in ("result", "count"):
        if k in r:
            parts.append(f"{k} {r[k]:#x}")
    if r.get("tcs") is not None and "leaf" not in r:
        parts.append(f"TCS {r['tcs']} from now on")
    exc = r.get("exception")
    if exc:
        parts.append(
            f"exception {exc['name']} (vector {exc['vector']}) error code {exc['error_code']:#x} "
            f"at {exc['address']:#x}, function {exc['function']}"
        )
    if "signal" in r:
        parts.append(f"process killed by {r['signal']}")
    return "; ".join(parts)


@click.command(name="run", epilog=OP_HELP)
@click.argument("enclave", metavar="ENCLAVE.elf")
@click.option("--key", "key_path", metavar="KEY.pem", help="Signing key [default: a fresh test key].")
@click.option("--tcs", "tcs", type=int, default=0, show_default=True, metavar="N", help="Enter through TCS N.")
@click.option("--op", "ops", metavar="OP", multiple=True, required=True, help="An op to run (repeatable; see below).")
@click.option("--heap", "heap", metavar="SIZE", default="4K", show_default=True, help="Heap load.c appends.")
@click.option("--epc", "epc", metavar="SIZE", default="128M", show_default=True, help="EPC size of the machine.")
@click.option("--kernel", "kernel", metavar="VARIANT", default=None, help="Driver design variant (default: merged).")
@relocations_option
@click.option("--base", "base_text", metavar="ADDR", default=None,
              help="Put ELRANGE at ADDR (a multiple of the enclave size) instead of where load.c would.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(
    enclave: str, key_path: str | None, tcs: int, ops: tuple[str, ...], heap: str, epc: str,
    kernel: str | None, relocations: str, base_text: str | None, as_json: bool,
) -> None:
    """Load ENCLAVE.elf (load.c rules), sign it, EINIT it, and call it with each --op.

    The enclave must speak the kernel selftest's protocol (the op struct's address in RDI),
    like sgxemu's test enclave. Each call prints what came back and any exception.
    Relocations the loader applies are applied for the base the ELRANGE reservation gives
    (or --base), and the enclave is signed after that: with the same key and base, MRENCLAVE
    and the SIGSTRUCT are those `sgxemu sign --base` writes.
    """
    from .. import Machine
    from ..linux.errors import Signal
    from ..linux.load import encl_build, measure
    from ..selftests.runner import session_key
    from ..sign import mrsigner_of_key

    parsed = [parse_op(text) for text in ops]
    heap_size = parse_size(heap, "--heap", maximum=1 << 30)
    epc_size = parse_size(epc, "--epc", minimum=64 << 10)
    _check_kernel(kernel)
    image = load_image(enclave, heap_size, relocations)
    check_ops(parsed, image, tcs)
    key = read_key(key_path) if key_path else session_key()
    base = parse_base(base_text) if base_text is not None else None
    if base is not None and base & (image.encl_size - 1):
        raise UsageLineError(
            f"--base {base:#x} is not a multiple of the enclave size {image.encl_size:#x}",
            "SECS.BASEADDR must be naturally aligned: give an aligned --base",
        )
    kw: dict[str, Any] = {"epc_size": epc_size, "engine": "native"}
    if kernel is not None:
        kw["kernel"] = kernel
    with Machine(**kw) as m:
        proc = m.spawn()
        try:
            encl = encl_build(proc, image, key, base=base)  # signs once relocated for the base
        except OSError as exc:
            if base is not None and exc.errno == errno.EEXIST:
                raise CliError(f"--base {base:#x}: that range is already mapped in the process",
                               "choose another --base") from exc
            raise CliError(
                f"building {enclave} through /dev/sgx_enclave failed: {os.strerror(exc.errno or 0)}",
                "check the ELF follows load.c's layout (first PT_LOAD: the TCS pages, RW)",
            ) from exc
        einit = _einit_identity(proc, encl)
        runner = Runner(proc, encl, tcs)
        results: list[dict[str, Any]] = []
        for op in parsed:
            try:
                results.append(runner.do(op))
            except Signal as sig:
                results.append({"op": op.text, "signal": type(sig).__name__, "signal_address": sig.addr})
                break
        info = {
            "enclave": str(image.path),
            "base": encl.base,
            "size": encl.size,
            "tcs": [encl.base + image.tcs_offset + i * PAGE for i in range(runner.ntcs)],
            "mrenclave": einit[0].hex() if einit else None,
            "mrenclave_offline": measure(encl.image).hex(),
            "mrsigner": einit[1].hex() if einit else mrsigner_of_key(key).hex(),
            "ops": results,
        }
    if as_json:
        emit_json(info)
        return
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = max(console.width, 120)
    console.print(f"enclave   {info['enclave']}: ELRANGE {encl.base:#x}+{encl.size:#x}, "
                  f"{runner.ntcs} TCS, EINIT done", soft_wrap=True)
    layout = ", ".join(
        f"{seg.offset:#x}+{seg.size:#x} {_prot(seg.prot)}" for seg in image.segments
    )
    console.print(f"segments  {layout}; unbacked: {image.src_size:#x}..{encl.size:#x}", soft_wrap=True)
    agree = "matches" if info["mrenclave"] == info["mrenclave_offline"] else "DIFFERS"
    console.print(f"MRENCLAVE {info['mrenclave']} (EINIT; offline: {agree})", soft_wrap=True)
    console.print(f"MRSIGNER  {info['mrsigner']}", soft_wrap=True)
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("op", no_wrap=True)
    for column in ("TCS", "leaf", "ret", "function", "what came back"):
        table.add_column(column)
    for i, r in enumerate(results, 1):
        table.add_row(
            str(i), r["op"], str(r.get("tcs", "")) if "leaf" in r else "", r.get("leaf", ""),
            str(r.get("ret", "")), r.get("function", ""), _describe(r),
        )
    console.print(table)
