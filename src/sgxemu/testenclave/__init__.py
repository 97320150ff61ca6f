"""sgxemu's own test enclave: sources, build helper and operation protocol.

The enclave speaks the Linux SGX selftest protocol (see ``protocol``) and is
laid out by the same rules as the selftest enclave, so the selftest scenarios
can be replayed against the emulator.
"""

from sgxemu.testenclave.build import EnclaveBuildError, build_test_enclave

__all__ = ["EnclaveBuildError", "build_test_enclave"]
