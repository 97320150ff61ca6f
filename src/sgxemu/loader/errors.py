"""Typed errors of the enclave-file loaders (SDK `.signed.so`, SGXS, detached SIGSTRUCT).

Every message is one line meant for a user: the CLI prints it as is.
"""

from __future__ import annotations

from sgxemu.loader.selftest_layout import EnclaveFormatError

__all__ = [
    "EnclaveFormatError",
    "InvalidMetadataError",
    "NotAnEnclaveError",
    "PartialMeasurementError",
    "SgxsFormatError",
    "SigstructFormatError",
    "TruncatedFileError",
    "UnknownMetadataVersionError",
    "UnsignedEnclaveError",
    "UnsupportedEnclaveError",
]


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
