"""Thin gRPC/HTTP shells over the transport-free core in `splitgpt.core`."""
