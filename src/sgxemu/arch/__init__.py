"""Architectural constants and byte-exact structures, shared by every layer."""
