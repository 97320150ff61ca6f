"""The `sgxemu` command line."""
