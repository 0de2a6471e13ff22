"""gRPC failures become HTTP statuses with a JSON body that says what to do."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from splitgpt.api.errors import HTTP_FOR_GRPC_STATUS, TYPE_FOR_STATUS, ApiError, printable
from splitgpt.api.grpc_errors import from_grpc, rpc_errors


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


def test_the_table_names_real_grpc_statuses_and_every_status_has_a_type():
    assert set(HTTP_FOR_GRPC_STATUS) <= {c.name for c in grpc.StatusCode}
    assert set(HTTP_FOR_GRPC_STATUS.values()) <= set(TYPE_FOR_STATUS)


def test_unreachable_service_is_named():
    err = from_grpc(rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), "tokenizer")
    assert err.body()["error"]["message"] == "the tokenizer service cannot be reached"


async def test_rpc_errors_turns_a_failed_call_into_an_api_error():
    with pytest.raises(ApiError) as caught, rpc_errors("coordinator"):
        raise rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
    assert caught.value.status == 429 and caught.value.body()["error"]["type"] == "overloaded"
    assert isinstance(caught.value.__cause__, AioRpcError)


def test_an_error_body_can_always_be_written_as_json():
    import json

    err = ApiError(422, None, "bad \ud800 here", param="x\udfff" * 100)
    raw = json.dumps(err.body(), ensure_ascii=False).encode("utf-8")  # would raise on a lone surrogate
    assert b"\\udfff" in raw and len(err.param) <= 100
    assert printable("ok") == "ok"
