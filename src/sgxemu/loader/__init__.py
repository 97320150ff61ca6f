"""Enclave image loaders: turn an enclave file into the pages to EADD."""
