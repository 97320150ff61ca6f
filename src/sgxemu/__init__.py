"""sgxemu: a faithful emulator of Intel SGX2 and the Linux SGX driver ABI."""

__version__ = "0.1.0"
