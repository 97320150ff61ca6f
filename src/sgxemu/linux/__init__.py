"""The Linux side: processes and address spaces, the /dev/sgx_enclave driver, faults,
the reclaimer and the vDSO enclave entry (Linux >= 6.0 ABI)."""

from .errors import SIGBUS, SIGSEGV, SIGTRAP, Signal
from .machine import Machine, MachineStats
from .process import Process, Thread

__all__ = ["SIGBUS", "SIGSEGV", "SIGTRAP", "Machine", "MachineStats", "Process", "Signal", "Thread"]
