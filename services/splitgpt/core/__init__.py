"""Transport-free core: model math, caches, sampling, scheduling, routing.

Nothing in this package imports grpc, fastapi or protobuf.
"""
