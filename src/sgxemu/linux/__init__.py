"""The Linux side: processes and address spaces, the /dev/sgx_enclave driver, faults,
the reclaimer and the vDSO enclave entry."""
