"""ENCL_CALL as the kernel selftest does it, for one process and one loaded test enclave.

Op structs live in process memory; one `sgx_enclave_run` is reused, so exception fields stay
as the vDSO left them (the selftests reset them by hand, and so must callers).
"""

from __future__ import annotations

from typing import Any

from .. import uapi
from ..testenclave import protocol as P
from .load import LoadedEnclave
from .process import Process, Thread

PAGE = 4096


class EnclCaller:
    """ENCL_CALL for one process: op structs in process memory, one run struct."""

    def __init__(self, proc: Process, loaded: LoadedEnclave) -> None:
        self.proc = proc
        self.e = loaded
        self.op = proc.alloc(PAGE)
        self.run = uapi.sgx_enclave_run()
        self.run.tcs = loaded.tcs

    def call(self, op: Any, leaf: int = uapi.EENTER, thread: Thread | None = None) -> int:
        self.proc.put(self.op, op)
        t = thread if thread is not None else self.proc.main
        ret = t.vdso_sgx_enter_enclave(self.op, 0, 0, leaf, 0, 0, self.run)
        self.result = type(op).from_buffer_copy(self.proc.read(self.op, len(bytes(op))))
        return ret

    def put_buf(self, value: int) -> int:
        return self.call(P.encl_op_put_to_buf(P.encl_op_header(P.ENCL_OP_PUT_TO_BUFFER), value))

    def get_buf(self) -> int:
        assert self.call(P.encl_op_get_from_buf(P.encl_op_header(P.ENCL_OP_GET_FROM_BUFFER), 0)) == 0
        return int(self.result.value)

    def put(self, addr: int, value: int, leaf: int = uapi.EENTER) -> int:
        return self.call(
            P.encl_op_put_to_addr(P.encl_op_header(P.ENCL_OP_PUT_TO_ADDRESS), value, addr), leaf
        )

    def get(self, addr: int) -> int:
        self.call(P.encl_op_get_from_addr(P.encl_op_header(P.ENCL_OP_GET_FROM_ADDRESS), 0, addr))
        return int(self.result.value)

    def eaccept(self, addr: int, flags: int) -> int:
        """EACCEPT from inside; returns the enclave's RAX (the vDSO must return 0)."""
        assert self.call(P.encl_op_eaccept(P.encl_op_header(P.ENCL_OP_EACCEPT), addr, flags, 0)) == 0
        return int(self.result.ret)

    def emodpe(self, addr: int, flags: int) -> int:
        return self.call(P.encl_op_emodpe(P.encl_op_header(P.ENCL_OP_EMODPE), addr, flags))

    def nop(self) -> int:
        return self.call(P.encl_op_header(P.ENCL_OP_NOP))

    def exc(self) -> tuple[int, int, int]:
        r = self.run
        return r.exception_vector, r.exception_error_code, r.exception_addr

    def clear_exc(self) -> None:
        self.run.exception_vector = 0
        self.run.exception_error_code = 0
        self.run.exception_addr = 0

    def ioctl(self, request: int, arg: Any) -> int:
        return self.proc.ioctl(self.e.fd, request, arg)
