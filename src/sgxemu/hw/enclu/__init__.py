"""ENCLU leaves (ring 3), one module per leaf, and the asynchronous enclave exit."""
