"""How enclave code runs: natively (x86-64 on Unicorn) or as scripted Python enclaves."""
