"""The request numbers and argument structs of SGX2 driver designs that were never merged.

`v1`: Reinette Chatre's series V1 (1 Dec 2021, cover.1638381245) — SGX_IOC_PAGE_MODP/MODT/REMOVE.
`v2`: the same series V2 (7 Feb 2022, cover.1644274683) — RELAX/RESTRICT_PERMISSIONS,
MODIFY_TYPE, REMOVE_PAGES, permissions and types passed through SECINFO pointers.
The merged ABI (Linux >= 6.0) is `sgxemu.uapi`. ioctls 0x00-0x04 are the same in all of them.
"""

from . import v1, v2

__all__ = ["v1", "v2"]
