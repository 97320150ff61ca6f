"""merged: the SGX2 driver as it went into Linux 6.0 (series V5, 10 May 2022) — the default.

No record of current rights: mmap/mprotect are checked against vm_max_prot_bits (RWX for pages
EAUG'd on fault), PTEs get the VMA's rights, there is no pfn_mkwrite, relaxing happens only inside
the enclave with EMODPE, and RESTRICT_PERMISSIONS runs EMODPR + ETRACK without zapping PTEs.
Everything is in `sgxemu.linux` itself; this class only names it.
"""

from __future__ import annotations

from ..policy import Linux60


class Merged(Linux60):
    """Linux >= 6.0."""

    name = "merged"
