"""gRPC failures become HTTP statuses with a JSON body that says what to do."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from splitgpt.api.errors import from_grpc


def rpc_error(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


@pytest.mark.parametrize(
    "code,status,retry",
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "1"),
        (grpc.StatusCode.UNAVAILABLE, 503, "1"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, None),
        (grpc.StatusCode.INVALID_ARGUMENT, 400, None),
        (grpc.StatusCode.INTERNAL, 502, None),
    ],
)
def test_status_mapping(code, status, retry):
    err = from_grpc(rpc_error(code, "partition 1 has no SERVING node"), "coordinator")
    assert err.status == status
    assert err.headers().get("Retry-After") == retry
    assert "partition 1" in err.body()["error"]["message"]


def test_unreachable_service_is_named():
    err = from_grpc(rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), "tokenizer")
    assert err.body()["error"]["message"] == "the tokenizer service cannot be reached"
