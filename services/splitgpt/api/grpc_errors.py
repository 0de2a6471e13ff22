"""The one place the gateway turns a failed gRPC call into an ApiError."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from .errors import ApiError, from_rpc_status


def from_grpc(exc: grpc.aio.AioRpcError, service: str) -> ApiError:
    return from_rpc_status(exc.code().name, exc.details() or "", service)


@contextmanager
def rpc_errors(service: str) -> Iterator[None]:
    """Every gRPC failure inside the block leaves it as the ApiError its status maps to.

    A plain (not async) context manager: it wraps awaits and `async for` alike,
    and a generator closed inside it (GeneratorExit) passes through untouched.
    """
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, service) from exc
