"""Typed errors of the enclave-file loaders (selftest-layout ELF, SDK `.signed.so`, SGXS,
detached SIGSTRUCT).

Every message is one line meant for a user: the CLI prints it as is.
"""

from __future__ import annotations

__all__ = [
    "BaseRequiredError",
    "EnclaveFormatError",
    "InvalidMetadataError",
    "NotAnEnclaveError",
    "PartialMeasurementError",
    "RelocationError",
    "SgxsFormatError",
    "SigstructFormatError",
    "TruncatedFileError",
    "UnknownMetadataVersionError",
    "UnsignedEnclaveError",
    "UnsupportedEnclaveError",
]


class EnclaveFormatError(ValueError):
    """The file is not an enclave image these loading rules accept."""


class NotAnEnclaveError(EnclaveFormatError):
    """Not an ELF file, not an SGXS stream, or an ELF without SDK metadata."""


class UnsignedEnclaveError(EnclaveFormatError):
    """An SDK enclave whose metadata (and so its SIGSTRUCT) was never written by sgx_sign."""


class UnknownMetadataVersionError(EnclaveFormatError):
    """No metadata copy has a version this loader (like the SDK's urts) accepts."""


class TruncatedFileError(EnclaveFormatError):
    """A structure the file declares extends past its end."""


class InvalidMetadataError(EnclaveFormatError):
    """Metadata or ELF structure that the SDK loader's checks would refuse."""


class UnsupportedEnclaveError(EnclaveFormatError):
    """A well-formed enclave using a feature this loader does not implement."""


class SgxsFormatError(EnclaveFormatError):
    """An SGXS stream that is not canonical or has an unknown record."""


class SigstructFormatError(EnclaveFormatError):
    """A detached SIGSTRUCT file of the wrong size."""


class PartialMeasurementError(EnclaveFormatError):
    """A page EEXTENDed in a way SGX_IOC_ENCLAVE_ADD_PAGES cannot reproduce (Linux ABI).

    ADD_PAGES measures either nothing or all 16 chunks in ascending order (ioctl.c
    __sgx_encl_extend); a stream measuring a subset or another order cannot be loaded.
    """


class RelocationError(EnclaveFormatError):
    """A dynamic relocation no loader without a dynamic linker can apply, or one outside the
    bytes the loader adds (see `sgxemu.loader.elf_relocs`)."""


class BaseRequiredError(EnclaveFormatError):
    """The image has relocations for the loader to apply, so its pages (and MRENCLAVE) depend
    on the enclave base, which was not given."""
