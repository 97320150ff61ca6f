"""Operation protocol of the test enclave (same numbers and structs as the
Linux SGX selftest enclave).

The host passes a pointer to one of these structs in RDI; the enclave reads
and writes it in place. Every field is a u64.
"""

from __future__ import annotations

import ctypes

__all__ = [
    "ENCL_OP_EACCEPT",
    "ENCL_OP_EMODPE",
    "ENCL_OP_GET_FROM_ADDRESS",
    "ENCL_OP_GET_FROM_BUFFER",
    "ENCL_OP_INIT_TCS_PAGE",
    "ENCL_OP_MAX",
    "ENCL_OP_NOP",
    "ENCL_OP_PUT_TO_ADDRESS",
    "ENCL_OP_PUT_TO_BUFFER",
    "MAGIC",
    "MAGIC2",
    "encl_op_eaccept",
    "encl_op_emodpe",
    "encl_op_get_from_addr",
    "encl_op_get_from_buf",
    "encl_op_header",
    "encl_op_init_tcs_page",
    "encl_op_put_to_addr",
    "encl_op_put_to_buf",
]

ENCL_OP_PUT_TO_BUFFER = 0
ENCL_OP_GET_FROM_BUFFER = 1
ENCL_OP_PUT_TO_ADDRESS = 2
ENCL_OP_GET_FROM_ADDRESS = 3
ENCL_OP_NOP = 4
ENCL_OP_EACCEPT = 5
ENCL_OP_EMODPE = 6
ENCL_OP_INIT_TCS_PAGE = 7
ENCL_OP_MAX = 8  # any type >= this is ignored by the enclave (it just EEXITs)

MAGIC = 0x1122334455667788
MAGIC2 = 0x8877665544332211


class encl_op_header(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint64)]


class encl_op_put_to_buf(ctypes.Structure):
    _fields_ = [("header", encl_op_header), ("value", ctypes.c_uint64)]


class encl_op_get_from_buf(ctypes.Structure):
    _fields_ = [("header", encl_op_header), ("value", ctypes.c_uint64)]


class encl_op_put_to_addr(ctypes.Structure):
    _fields_ = [
        ("header", encl_op_header),
        ("value", ctypes.c_uint64),
        ("addr", ctypes.c_uint64),
    ]


class encl_op_get_from_addr(ctypes.Structure):
    _fields_ = [
        ("header", encl_op_header),
        ("value", ctypes.c_uint64),
        ("addr", ctypes.c_uint64),
    ]


class encl_op_eaccept(ctypes.Structure):
    # ret: the ENCLU return code in EAX, sign-extended from 32 bits.
    _fields_ = [
        ("header", encl_op_header),
        ("epc_addr", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("ret", ctypes.c_uint64),
    ]


class encl_op_emodpe(ctypes.Structure):
    _fields_ = [
        ("header", encl_op_header),
        ("epc_addr", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class encl_op_init_tcs_page(ctypes.Structure):
    # tcs_page is a linear address; ssa and entry are enclave offsets.
    _fields_ = [
        ("header", encl_op_header),
        ("tcs_page", ctypes.c_uint64),
        ("ssa", ctypes.c_uint64),
        ("entry", ctypes.c_uint64),
    ]
