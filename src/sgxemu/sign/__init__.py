"""Offline enclave tooling: MRENCLAVE measurement and SIGSTRUCT signing (above `sgxemu.hw`)."""

from sgxemu.sign.measure import EnclaveMeasurer
from sgxemu.sign.sigstruct import (
    SigningError,
    generate_key,
    load_key,
    mrsigner_of_key,
    sign_sigstruct,
)

__all__ = [
    "EnclaveMeasurer",
    "SigningError",
    "generate_key",
    "load_key",
    "mrsigner_of_key",
    "sign_sigstruct",
]
