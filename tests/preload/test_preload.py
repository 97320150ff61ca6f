"""`sgxemu exec` and the preload library: an unmodified C host program against sgxemu.

`host.c` (libc and <asm/sgx.h> only) builds the project's test enclave the way the kernel
selftest's loader does and runs selftest scenarios, printing one line per scenario. The same
scenarios are written here against the Python API (`Reference`); the lines must be identical,
on an SGX2 and on an SGX1 machine. gcc is required: without it these tests fail.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hostprog import TIMEOUT, sgxemu_exec, write_uapi_header
from sgxemu import Machine, uapi
from sgxemu.linux.load import LoadedEnclave, encl_build
from sgxemu.linux.mman import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
)
from sgxemu.linux.process import Process
from sgxemu.loader.selftest_layout import EnclaveImage
from sgxemu.testenclave import protocol as P

PAGE = 4096
EENTER, ERESUME, EEXIT = 2, 3, 4
EPC = 8 << 20


def cx(value: int) -> str:
    """C's printf("%#lx"): 0 prints as 0."""
    return hex(value) if value else "0"


# -- running it (`built`, the host program and the enclave, is in tests/conftest.py) ----------
def run_host(built: dict[str, Any], *extra: str, sgx1: bool = False) -> list[str]:
    opts = ["--epc", "8M"] + (["--sgx1"] if sgx1 else [])
    proc = sgxemu_exec(*opts, "--", str(built["host"]), str(built["elf"]), str(built["sig_path"]), *extra)
    assert proc.returncode == 0, f"host exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.splitlines()


# -- the same scenarios through the Python API --------------------------------------------------
class Reference:
    """host.c's scenarios, line for line, on a Machine driven through the Python API."""

    def __init__(self, image: EnclaveImage, sig: bytes, sgx2: bool) -> None:
        self.m = Machine(epc_size=EPC, sgx2=sgx2, engine="native")
        self.proc: Process = self.m.spawn()
        self.image = image
        self.e: LoadedEnclave = encl_build(self.proc, image, sigstruct=sig)
        self.base = self.e.base
        self.D = self.base + image.data_offset + PAGE
        self.T = image.src_size
        self.scratch = self.proc.alloc(4 * PAGE)
        self.kept = self.scratch + PAGE  # the op struct ERESUME continues
        self.sgx2 = False
        self.lines: list[str] = []

    def close(self) -> None:
        self.m.close()

    def out(self, line: str) -> None:
        self.lines.append(line)

    def new_run(self, tcs: int | None = None) -> uapi.sgx_enclave_run:
        run = uapi.sgx_enclave_run()
        run.tcs = self.base if tcs is None else tcs
        return run

    def call(self, op: Any, run: uapi.sgx_enclave_run, leaf: int = EENTER, at: int | None = None) -> tuple[int, Any]:
        addr = self.scratch if at is None else at
        self.proc.put(addr, op)
        ret = self.proc.vdso_sgx_enter_enclave(addr, 0, 0, leaf, 0, 0, run)
        return ret, self.proc.get(addr, type(op))

    def put(self, run: uapi.sgx_enclave_run, addr: int, value: int, leaf: int = EENTER) -> int:
        op = P.encl_op_put_to_addr(P.encl_op_header(P.ENCL_OP_PUT_TO_ADDRESS), value, addr)
        return self.call(op, run, leaf)[0]

    def get(self, run: uapi.sgx_enclave_run, addr: int) -> tuple[int, int]:
        op = P.encl_op_get_from_addr(P.encl_op_header(P.ENCL_OP_GET_FROM_ADDRESS), 0, addr)
        ret, res = self.call(op, run)
        return ret, int(res.value)

    def eaccept(self, run: uapi.sgx_enclave_run, addr: int, flags: int) -> int:
        op = P.encl_op_eaccept(P.encl_op_header(P.ENCL_OP_EACCEPT), addr, flags, 0)
        res = self.call(op, run)[1]
        return ctypes.c_int64(res.ret).value

    def exc(self, run: uapi.sgx_enclave_run) -> str:
        a = run.exception_addr
        where = "0" if not a else ("encl" if self.base <= a < self.base + self.e.size else "host")
        return f"{run.function}:{run.exception_vector}:{cx(run.exception_error_code)}:{where}"

    def exc_off(self, run: uapi.sgx_enclave_run) -> str:
        a = run.exception_addr
        return f"{run.function}:{run.exception_vector}:{cx(run.exception_error_code)}:{cx(a - self.base if a else 0)}"

    @staticmethod
    def clear(run: uapi.sgx_enclave_run) -> None:
        run.exception_vector = run.exception_error_code = run.exception_addr = 0

    def sgx2_errno(self) -> int:
        try:
            self.proc.ioctl(self.e.fd, uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, uapi.sgx_enclave_modify_types())
        except OSError as exc:
            return 0 if exc.errno == 22 else int(exc.errno or 0)
        return 0

    # -- scenarios --------------------------------------------------------------------------------
    def header(self) -> None:
        p = self.proc
        _, ebx, ecx, _ = p.cpuid(7, 0)
        eax = p.cpuid(0x12, 0)[0]
        self.sgx2 = bool(eax >> 1 & 1)
        epc = 0
        for sub in range(2, 10):
            a, _, c, d = p.cpuid(0x12, sub)
            if a & 0xF != 1:
                break
            epc += (c & 0xFFFFF000) + ((d & 0xFFFFF) << 32)
        self.out(f"cpuid sgx={ebx >> 2 & 1} lc={ecx >> 30 & 1} sgx1={eax & 1} sgx2={int(self.sgx2)} epc={cx(epc)}")
        self.out("vdso hash=1 sections=1 same=1")
        self.out(f"built size={cx(self.e.size)} segments={len(self.image.segments)}")

    def unclobbered_vdso(self) -> None:
        run = self.new_run()
        r1, _ = self.call(P.encl_op_put_to_buf(P.encl_op_header(P.ENCL_OP_PUT_TO_BUFFER), P.MAGIC), run)
        f1 = run.function
        r2, res = self.call(P.encl_op_get_from_buf(P.encl_op_header(P.ENCL_OP_GET_FROM_BUFFER), 0), run)
        self.out(f"unclobbered_vdso ret={r1},{r2} function={f1},{run.function} exc={self.exc(run)} "
                 f"user_data={cx(run.user_data)} value={cx(res.value)}")  # fmt: skip

    def clobbered_vdso(self) -> None:
        run = self.new_run()
        r1, _ = self.call(P.encl_op_put_to_buf(P.encl_op_header(P.ENCL_OP_PUT_TO_BUFFER), P.MAGIC2), run)
        r2, res = self.call(P.encl_op_get_from_buf(P.encl_op_header(P.ENCL_OP_GET_FROM_BUFFER), 0), run)
        self.out(f"clobbered_vdso ret={r1},{r2} function={run.function} value={cx(res.value)}")

    def clobbered_vdso_and_user_function(self) -> None:
        calls = []

        def handler(rdi: int, rsi: int, rdx: int, rsp: int, r8: int, r9: int, run: uapi.sgx_enclave_run) -> int:
            calls.append(rdi)
            run.user_data = 0
            return 0

        run = self.new_run()
        run.user_handler = self.proc.callback(handler)
        run.user_data = 0xDEADBEEF
        r1, _ = self.call(P.encl_op_put_to_buf(P.encl_op_header(P.ENCL_OP_PUT_TO_BUFFER), P.MAGIC), run)
        ud1 = run.user_data
        run.user_data = 0xDEADBEEF
        r2, res = self.call(P.encl_op_get_from_buf(P.encl_op_header(P.ENCL_OP_GET_FROM_BUFFER), 0), run)
        self.out(f"clobbered_vdso_and_user_function ret={r1},{r2} calls={len(calls)} "
                 f"function={run.function} user_data={cx(ud1)},{cx(run.user_data)} value={cx(res.value)}")  # fmt: skip

    def tcs_entry(self) -> None:
        run = self.new_run()
        nop = P.encl_op_header(P.ENCL_OP_NOP)
        r1, _ = self.call(nop, run)
        f1 = run.function
        run.tcs = self.base + PAGE
        r2, _ = self.call(nop, run)
        self.out(f"tcs_entry ret={r1},{r2} function={f1},{run.function} exc={self.exc(run)}")

    def vdso_checks(self) -> None:
        run = self.new_run()
        nop = P.encl_op_header(P.ENCL_OP_NOP)
        bad_leaf, _ = self.call(nop, run, EEXIT)
        run.reserved[100] = 1
        bad_reserved, _ = self.call(nop, run)
        run.reserved[100] = 0
        ok, _ = self.call(nop, run)
        self.out(f"vdso_checks leaf={bad_leaf} reserved={bad_reserved} ok={ok} function={run.function}")

    def provision(self) -> None:
        p = self.proc
        pfd = p.open("/dev/sgx_provision", os.O_RDONLY)
        ret = p.ioctl(self.e.fd, uapi.SGX_IOC_ENCLAVE_PROVISION, uapi.sgx_enclave_provision(fd=pfd))
        try:
            p.ioctl(self.e.fd, uapi.SGX_IOC_ENCLAVE_PROVISION, uapi.sgx_enclave_provision(fd=1 << 31))
            bad = "0,0"
        except OSError as exc:
            bad = f"-1,{exc.errno}"
        try:
            p.mmap(0, PAGE, PROT_READ, MAP_SHARED, pfd, 0)
            mapped = "0,0"
        except OSError as exc:
            mapped = f"-1,{exc.errno}"
        p.close(pfd)
        self.out(f"provision chr=1 ioctl={ret} bad={bad} mmap={mapped}")

    def pte_permissions(self) -> None:
        run, D = self.new_run(), self.D
        self.put(run, D, P.MAGIC)
        _, v1 = self.get(run, D)
        self.proc.mprotect(D, PAGE, PROT_READ)
        r = self.put(run, D, P.MAGIC2)
        line = f"pte_permissions first={cx(v1)} ret={r} fault={self.exc_off(run)}"
        self.clear(run)
        self.proc.mprotect(D, PAGE, PROT_READ | PROT_WRITE)
        r = self.put(run, D, P.MAGIC2, ERESUME)
        line += f" resume={r},{run.function}"
        _, v2 = self.get(run, D)
        self.out(f"{line} exc={self.exc(run)} value={cx(v2)}")

    def aex_eresume(self) -> None:
        calls: list[int] = []

        def handler(rdi: int, rsi: int, rdx: int, rsp: int, r8: int, r9: int, run: uapi.sgx_enclave_run) -> int:
            calls.append(run.exception_error_code)
            if run.function == ERESUME and run.exception_vector == 14:
                self.proc.mprotect(self.D, PAGE, PROT_READ | PROT_WRITE)
                self.clear(run)
                return ERESUME
            return 0

        run = self.new_run()
        self.proc.mprotect(self.D, PAGE, PROT_READ)
        run.user_handler = self.proc.callback(handler)
        self.put(run, self.D, P.MAGIC)
        run.user_handler = 0
        r, v = self.get(run, self.D)
        self.out(f"aex_eresume ret={r} calls={len(calls)} fault_error={cx(calls[0])} "
                 f"function={run.function} value={cx(v)}")  # fmt: skip

    def host_memory(self) -> None:
        p = self.proc
        run = self.new_run()
        stack = self.scratch + 2 * PAGE
        r1 = self.put(run, stack, P.MAGIC)
        seen = int.from_bytes(p.read(stack, 8), "little")
        ro_page = p.alloc(PAGE)
        p.write(ro_page + 0x10, (0x0123456789ABCDEF).to_bytes(8, "little"))
        p.mprotect(ro_page, PAGE, PROT_READ)
        r2, ro = self.get(run, ro_page + 0x10)
        line = f"host_memory write={cx(seen)} read={cx(ro)} ret={r1},{r2}"
        self.put(run, ro_page + 0x10, P.MAGIC)
        line += f" ro={run.function}:{run.exception_vector}:{cx(run.exception_error_code)}:{int(run.exception_addr == ro_page)}"
        self.clear(run)
        p.mprotect(ro_page, PAGE, PROT_READ | PROT_WRITE)
        self.put(run, ro_page + 0x10, P.MAGIC, ERESUME)
        const = int.from_bytes(p.read(ro_page + 0x10, 8), "little")
        line += f" ro_resume={run.function} const={cx(const)}"
        gone = p.alloc(PAGE)
        p.munmap(gone, PAGE)
        run = self.new_run(self.base + PAGE)
        op = P.encl_op_get_from_addr(P.encl_op_header(P.ENCL_OP_GET_FROM_ADDRESS), 0, gone + 8)
        self.call(op, run, EENTER, at=self.kept)
        line += f" unmapped={run.function}:{run.exception_vector}:{cx(run.exception_error_code)}:{int(run.exception_addr == gone)}"
        self.clear(run)
        p.mmap(gone, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
        p.write(gone + 8, (42).to_bytes(8, "little"))
        ret = p.vdso_sgx_enter_enclave(self.kept, 0, 0, ERESUME, 0, 0, run)
        assert ret == 0
        value = p.get(self.kept, P.encl_op_get_from_addr).value
        self.out(f"{line} unmapped_resume={run.function} value={cx(value)}")
        p.munmap(gone, PAGE)

    def direct_enclu(self) -> None:
        run = self.new_run()
        self.call(P.encl_op_put_to_buf(P.encl_op_header(P.ENCL_OP_PUT_TO_BUFFER), P.MAGIC2), run)
        run.tcs = self.base + PAGE
        _, res = self.call(P.encl_op_get_from_buf(P.encl_op_header(P.ENCL_OP_GET_FROM_BUFFER), 0), run)
        self.out(f"direct_enclu value={cx(res.value)}")

    def epcm_permissions(self) -> None:
        err = self.sgx2_errno()
        if not self.sgx2 or err:
            self.out(f"epcm_permissions skipped sgx2={int(self.sgx2)} errno={err}")
            return
        run, D = self.new_run(), self.D
        self.put(run, D, P.MAGIC)
        rp = uapi.sgx_enclave_restrict_permissions(self.image.data_offset + PAGE, PAGE, uapi.SGX_SECINFO_R)
        ret = self.proc.ioctl(self.e.fd, uapi.SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, rp)
        acc = self.eaccept(run, D, 0x221)
        line = f"epcm_permissions ioctl={ret} result={rp.result} count={cx(rp.count)} eaccept={acc}"
        self.put(run, D, P.MAGIC2)
        line += f" fault={self.exc_off(run)}"
        self.clear(run)
        run.tcs = self.base + PAGE
        r2, _ = self.call(P.encl_op_emodpe(P.encl_op_header(P.ENCL_OP_EMODPE), D, 0x3), run)
        run.tcs = self.base
        self.put(run, D, P.MAGIC2, ERESUME)
        _, v = self.get(run, D)
        self.out(f"{line} emodpe={r2} resume={run.function} value={cx(v)}")

    def augment(self) -> None:
        if not self.sgx2:
            self.out("augment skipped")
            return
        addr = self.base + self.T
        got = self.proc.mmap(addr, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_FIXED, self.e.fd, 0)
        run = self.new_run()
        r = self.put(run, addr, P.MAGIC)
        line = f"augment map={int(got == addr)} ret={r} fault={self.exc_off(run)}"
        self.clear(run)
        run.tcs = self.base + PAGE
        acc = self.eaccept(run, addr, 0x20B)
        run.tcs = self.base
        self.put(run, addr, P.MAGIC, ERESUME)
        f = run.function
        _, v = self.get(run, addr)
        self.out(f"{line} eaccept={acc} resume={f} value={cx(v)}")
        self.proc.munmap(addr, PAGE)

    def trim_remove(self) -> None:
        err = self.sgx2_errno()
        if not self.sgx2 or err:
            self.out(f"trim_remove skipped sgx2={int(self.sgx2)} errno={err}")
            return
        run, page = self.new_run(), self.D
        off = page - self.base
        mt = uapi.sgx_enclave_modify_types(off, PAGE, uapi.SGX_PAGE_TYPE_TRIM)
        m = self.proc.ioctl(self.e.fd, uapi.SGX_IOC_ENCLAVE_MODIFY_TYPES, mt)
        try:
            self.proc.ioctl(self.e.fd, uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, uapi.sgx_enclave_remove_pages(off, PAGE))
            early = "0,0"
        except OSError as exc:
            early = f"-1,{exc.errno}"
        acc = self.eaccept(run, page, 0x410)
        rp = uapi.sgx_enclave_remove_pages(off, PAGE)
        rm = self.proc.ioctl(self.e.fd, uapi.SGX_IOC_ENCLAVE_REMOVE_PAGES, rp)
        line = (f"trim_remove modify={m} result={mt.result} count={cx(mt.count)} early={early} "
                f"eaccept={acc} remove={rm},{cx(rp.count)}")  # fmt: skip
        op = P.encl_op_get_from_addr(P.encl_op_header(P.ENCL_OP_GET_FROM_ADDRESS), P.MAGIC, page)
        self.call(op, run, EENTER, at=self.kept)
        line += f" after={self.exc_off(run)}"
        self.clear(run)
        run.tcs = self.base + PAGE
        acc2 = self.eaccept(run, page, 0x20B)
        run.tcs = self.base
        self.proc.vdso_sgx_enter_enclave(self.kept, 0, 0, ERESUME, 0, 0, run)
        value = self.proc.get(self.kept, P.encl_op_get_from_addr).value
        self.out(f"{line} eaccept2={acc2} resume={run.function} value={cx(value)}")

    def threads(self) -> None:
        errors = [0, 0]
        slot = self.scratch + 3 * PAGE
        for n, tcs in enumerate((self.base, self.base + PAGE)):
            t = self.proc.thread()
            run = self.new_run(tcs)
            for i in range(40):
                v = P.MAGIC ^ (i << 8) ^ tcs
                op = P.encl_op_put_to_addr(P.encl_op_header(P.ENCL_OP_PUT_TO_ADDRESS), v, slot + 8 * n)
                self.proc.put(self.scratch, op)
                r = t.vdso_sgx_enter_enclave(self.scratch, 0, 0, EENTER, 0, 0, run)
                if r or run.function != EEXIT or int.from_bytes(self.proc.read(slot + 8 * n, 8), "little") != v:
                    errors[n] += 1
                op2 = P.encl_op_get_from_addr(P.encl_op_header(P.ENCL_OP_GET_FROM_ADDRESS), 0, slot + 8 * n)
                self.proc.put(self.scratch, op2)
                r = t.vdso_sgx_enter_enclave(self.scratch, 0, 0, EENTER, 0, 0, run)
                if r or self.proc.get(self.scratch, P.encl_op_get_from_addr).value != v:
                    errors[n] += 1
        self.out(f"threads ok={sum(e == 0 for e in errors)} errors={sum(errors)}")

    def fork(self) -> None:
        run = self.new_run()
        r, _ = self.call(P.encl_op_get_from_buf(P.encl_op_header(P.ENCL_OP_GET_FROM_BUFFER), 0), run)
        self.out(f"fork child_status={0 if r == 0 and run.function == EEXIT else 1}")

    SCENARIOS = (
        "unclobbered_vdso", "clobbered_vdso", "clobbered_vdso_and_user_function", "tcs_entry",
        "vdso_checks", "provision", "pte_permissions", "aex_eresume", "host_memory", "direct_enclu", "epcm_permissions",
        "augment", "threads", "fork", "trim_remove",
    )  # fmt: skip

    def run_all(self) -> list[str]:
        self.header()
        for name in self.SCENARIOS:
            getattr(self, name)()
        self.out("done")
        return self.lines


def reference_lines(built: dict[str, Any], sgx2: bool) -> list[str]:
    ref = Reference(built["image"], built["sig"], sgx2)
    try:
        return ref.run_all()
    finally:
        ref.close()


# -- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sgx2", [True, False], ids=["sgx2", "sgx1"])
def test_host_program_matches_python_api(built: dict[str, Any], sgx2: bool) -> None:
    expected = reference_lines(built, sgx2)
    got = run_host(built, sgx1=not sgx2)
    assert got == expected
    # What the scenarios show, spelled out (the comparison above already implies it):
    lines = {line.split()[0]: line for line in got}
    assert "value=0x1122334455667788" in lines["unclobbered_vdso"]
    assert "fault=3:14:0x7:0x4000" in lines["pte_permissions"]  # AEX, fixup, then ERESUME
    assert "ro=3:14:0x7:1" in lines["host_memory"] and "unmapped=3:14:0x4:1" in lines["host_memory"]
    assert lines["threads"] == "threads ok=2 errors=0"
    assert lines["vdso_checks"] == "vdso_checks leaf=-22 reserved=-22 ok=0 function=4"
    assert lines["fork"] == "fork child_status=0"
    if sgx2:
        assert "fault=3:14:0x8007:0xa000" in lines["augment"]  # EAUG on fault, then EACCEPT
        assert "eaccept=0" in lines["epcm_permissions"]
        assert "remove=0,0x1000" in lines["trim_remove"]
    else:
        assert lines["augment"] == "augment skipped"
        assert lines["cpuid"].endswith("sgx2=0 epc=0x800000")


def test_kernel_variant_option(built: dict[str, Any]) -> None:
    proc = sgxemu_exec("--epc", "8M", "--kernel", "v2", "--", str(built["host"]), str(built["elf"]),
                       str(built["sig_path"]), "tcs_entry")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "tcs_entry ret=0,0 function=4,4 exc=4:0:0:0" in proc.stdout


def test_environment_configuration(built: dict[str, Any]) -> None:
    """SGXEMU_* variables configure the machine without `sgxemu exec` options."""
    env = {"LD_PRELOAD": str(built["lib"]), "SGXEMU_EPC": "16M", "SGXEMU_SGX1": "1",
           "SGXEMU_PYTHON": sys.executable}  # fmt: skip
    full = dict(os.environ)
    full.update(env)
    proc = subprocess.run([str(built["host"]), str(built["elf"]), str(built["sig_path"]), "tcs_entry"],
                          capture_output=True, text=True, timeout=TIMEOUT, env=full, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "cpuid sgx=1 lc=1 sgx1=1 sgx2=0 epc=0x1000000"


def _kernel_offers_cpuid_faulting() -> bool:
    """arch_prctl(ARCH_SET_CPUID, 0) in a throw-away process: 0 where the kernel offers it."""
    probe = (
        "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
        "sys.exit(0 if libc.syscall(158, 0x1012, 0) == 0 else 1)"  # SYS_arch_prctl, ARCH_SET_CPUID
    )
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


CPUID_FAULTING = _kernel_offers_cpuid_faulting()
SGX_CPUID_LINE = "cpuid sgx=1 lc=1 sgx1=1 sgx2=1 epc=0x8000000"  # host.c's first line, 128M EPC


def test_auto_uses_cpuid_faulting_exactly_when_the_kernel_offers_it(built: dict[str, Any]) -> None:
    proc = sgxemu_exec("--", str(built["host"]), "--open", env={"SGXEMU_VERBOSE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "open ok"
    want = "faulting" if CPUID_FAULTING else "patched"
    assert f"preload active (cpuid: {want})" in proc.stderr


@pytest.mark.parametrize("mode", ["fault", "patch", "off"])
def test_each_cpuid_mode_answers_as_documented(built: dict[str, Any], mode: str) -> None:
    """fault: emulated where the kernel offers CPUID faulting, else a log line and the host's
    CPUID (no SGX on this machine's CPU); patch: emulated by rewriting; off: the host's."""
    proc = sgxemu_exec("--cpuid", mode, "--", str(built["host"]), str(built["elf"]), str(built["sig_path"]), "tcs_entry", env={"SGXEMU_VERBOSE": "1"})
    emulated = mode == "patch" or (mode == "fault" and CPUID_FAULTING)
    first = proc.stdout.splitlines()[0] if proc.stdout else ""
    if emulated:
        assert proc.returncode == 0, proc.stderr
        assert first == SGX_CPUID_LINE
        want = "faulting" if mode == "fault" else "patched"
        assert f"preload active (cpuid: {want})" in proc.stderr
    else:
        assert first.startswith("cpuid sgx=0 "), proc.stdout  # the host CPU has no SGX
        assert "preload active (cpuid: not emulated)" in proc.stderr
        refused = "SGXEMU_CPUID=fault but the kernel refuses CPUID faulting: CPUID is not emulated"
        assert (refused in proc.stderr) == (mode == "fault")


def test_without_preload_the_host_sees_no_sgx(built: dict[str, Any]) -> None:
    proc = subprocess.run([str(built["host"]), "--open"], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)  # fmt: skip
    assert proc.returncode == 1 and "open ok" not in proc.stdout


# -- bad configurations: one clear line ------------------------------------------------------------
def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_no_compiler_is_one_line(built: dict[str, Any], tmp_path: Path) -> None:
    line = _one_line_error(sgxemu_exec("--", "/bin/true", env={"CC": "no-such-cc", "XDG_CACHE_HOME": str(tmp_path)}))
    assert "compiler 'no-such-cc' not found" in line


def test_unknown_kernel_is_one_line() -> None:
    line = _one_line_error(sgxemu_exec("--kernel", "nope", "--", "/bin/true"))
    assert "unknown kernel variant 'nope'" in line


def test_bad_epc_is_one_line() -> None:
    assert "is not a size" in _one_line_error(sgxemu_exec("--epc", "lots", "--", "/bin/true"))


def test_missing_program_is_one_line(built: dict[str, Any]) -> None:
    assert "not found" in _one_line_error(sgxemu_exec("--", "/no/such/program"))


def test_unsupported_architecture_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from sgxemu.preload import build as b

    monkeypatch.setattr(b.platform, "machine", lambda: "aarch64")
    with pytest.raises(b.PreloadBuildError, match=r"^unsupported architecture 'aarch64' \(needs x86-64\)$"):
        b.build_preload()


def test_missing_python_headers_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sgxemu.preload import build as b

    real = b.sysconfig.get_config_var
    monkeypatch.setattr(b.sysconfig, "get_config_var",
                        lambda name: str(tmp_path) if name == "INCLUDEPY" else real(name))  # fmt: skip
    with pytest.raises(b.PreloadBuildError, match="Python.h not found"):
        b.build_preload(tmp_path / "out")


def test_uapi_header_fallback_compiles(tmp_path: Path) -> None:
    """The <asm/sgx.h> written from sgxemu.uapi is enough to build host.c."""
    cc = shutil.which("gcc")
    assert cc is not None
    write_uapi_header(tmp_path / "include")
    src = tmp_path / "only.c"
    src.write_text('#include "asm/sgx.h"\n_Static_assert(sizeof(struct sgx_enclave_run) == 256, "run");\n'
                   "_Static_assert(SGX_IOC_ENCLAVE_ADD_PAGES == 0xc030a401UL, \"ioctl\");\nint x;\n")  # fmt: skip
    subprocess.run([cc, "-c", "-Wall", "-Werror", f"-I{tmp_path / 'include'}", "-o", str(tmp_path / "o.o"), str(src)],
                   check=True)  # fmt: skip


# -- pieces in isolation --------------------------------------------------------------------------
def test_host_memory_reports_host_rights() -> None:
    import mmap

    from sgxemu.linux.hostmem import HostMemory, HostMm

    mem = HostMemory((1 << 47, (1 << 47) + (1 << 20)))
    rw = mmap.mmap(-1, PAGE)
    a_rw = ctypes.addressof(ctypes.c_char.from_buffer(rw))
    pte = mem.translate(a_rw)
    assert pte & 0xFFFF_FFFF_F000 == a_rw and pte & 0b111 == 0b111  # P|W|U, frame = the page
    assert mem.read(a_rw, 4) == b"\0\0\0\0"
    mem.write(a_rw + 8, b"host")
    assert rw[8:12] == b"host"
    with open("/proc/self/maps") as f:  # some read-only mapping of this process
        ro_start = next(int(line.split("-")[0], 16) for line in f if " r--p " in line)
    assert mem.translate(ro_start) & 0b111 == 0b101  # present, user, not writable
    assert mem.translate(0x1000) == 0  # nothing is mapped there
    mm = HostMm(mem)  # type: ignore[arg-type]
    vma = mm.vma_lookup(a_rw)
    assert vma is not None and vma.start <= a_rw < vma.end and vma.flags & 0x3 == 0x3
    assert mm.vma_lookup(0x1000) is None
    assert mem.maps.queries >= 2
    mem.close()


def test_cpuid_sites_found_in_host(built: dict[str, Any]) -> None:
    from sgxemu.preload.runtime import find_cpuid_sites

    sites = find_cpuid_sites(str(built["host"]), 0)
    blob = Path(built["host"]).read_bytes()
    assert sites, "host.c executes CPUID"
    assert len(sites) <= blob.count(b"\x0f\xa2")


_FAULTY_C = r"""
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void on_segv(int sig) { (void)sig; write(1, "handled\n", 8); _exit(3); }
int main(int argc, char **argv) {
    (void)argv;
    if (argc > 1) { struct sigaction sa; memset(&sa, 0, sizeof(sa)); sa.sa_handler = on_segv;
                    sigaction(SIGSEGV, &sa, NULL); }
    void (*f)(void) = (void (*)(void))0x1234;
    f();
    return 0;
}
"""


def test_program_faults_behave_as_without_the_library(built: dict[str, Any], tmp_path: Path) -> None:
    """The library's SIGSEGV/SIGILL handlers pass the program's own faults through: to its
    handler when it installed one, else the default action."""
    src = tmp_path / "faulty.c"
    src.write_text(_FAULTY_C)
    exe = tmp_path / "faulty"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    plain = sgxemu_exec("--", str(exe))
    assert plain.returncode == -11
    handled = sgxemu_exec("--", str(exe), "handler")
    assert handled.returncode == 3 and handled.stdout == "handled\n"


def test_direct_enclu_fault_is_a_signal_at_the_enclu(built: dict[str, Any]) -> None:
    """ENCLU executed by host code, EENTER on a page that is no TCS: the EPCM check fails (#PF
    with the SGX bit), which Linux cannot fix, so the program's SIGSEGV handler runs with
    SEGV_ACCERR, si_addr = the page, RIP at the ENCLU."""
    proc = sgxemu_exec("--epc", "8M", "--", str(built["host"]), str(built["elf"]),
                       str(built["sig_path"]), "--direct-fault")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "direct_fault sig=11 code=2 at_enclu=1 addr=0x2000"


def test_tcs_busy_rule_between_host_threads(built: dict[str, Any]) -> None:
    """Two host threads on one TCS: an EENTER while the other is inside is #GP (reported by the
    vDSO as function=EENTER, vector 13); nothing else goes wrong. SGXEMU_SLICE=5 makes the
    threads interleave inside the enclave."""
    proc = sgxemu_exec("--epc", "8M", "--", str(built["host"]), str(built["elf"]),
                       str(built["sig_path"]), "--tcs-busy", "150", env={"SGXEMU_SLICE": "5"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.splitlines()[-1]
    counts = dict(kv.split("=") for kv in line.split()[1:])
    assert int(counts["ok"]) > 0 and int(counts["busy"]) > 0 and counts["other"] == "0", line
    assert int(counts["ok"]) + int(counts["busy"]) == 300


def test_signals_while_enclave_code_runs(built: dict[str, Any]) -> None:
    """SIGALRM every millisecond during enclave calls: delivered, and every call completes."""
    proc = sgxemu_exec("--epc", "8M", "--", str(built["host"]), str(built["elf"]),
                       str(built["sig_path"]), "--signals", "300")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "signals calls=300 ok=300 handled=1" in proc.stdout
