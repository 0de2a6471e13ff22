"""Core exceptions -> status codes through the interceptor every GrpcServer installs.

A small service whose methods raise what the request names runs on a real
GrpcServer, so each row of the table is checked end to end, for unary,
server-streaming and bidirectional methods alike.
"""

from __future__ import annotations

import logging

import grpc
import pytest

from splitgpt.core.generation_types import GenerationError
from splitgpt.core.node_contract import (
    CacheBudgetExceeded,
    CacheMiss,
    NodeFailed,
    NodeNotReady,
    StepFailed,
    StepInputError,
    WrongPartition,
)
from splitgpt.core.tensors import TensorFormatError
from splitgpt.core.vocabulary import TokenIdError
from splitgpt.shells.error_mapping import error_from_status
from splitgpt.shells.grpc_runtime import GrpcServer, insecure_channel

Code = grpc.StatusCode
FAULTS: dict[str, tuple[Exception, grpc.StatusCode]] = {
    "cache-miss": (CacheMiss({"s1": "no cache held (asked for position 7)"}), Code.FAILED_PRECONDITION),
    "wrong-partition": (WrongPartition("only the last partition embeds"), Code.FAILED_PRECONDITION),
    "step-input": (StepInputError("hidden must be [3, 64]"), Code.INVALID_ARGUMENT),
    "tensor-format": (TensorFormatError("needs 256 bytes, got 12"), Code.INVALID_ARGUMENT),
    "token-ids": (TokenIdError("token ids out of range [0, 50257): [70000]"), Code.INVALID_ARGUMENT),
    "budget": (CacheBudgetExceeded("a step of 900 tokens exceeds the KV budget of 100"), Code.RESOURCE_EXHAUSTED),
    "loading": (NodeNotReady("n0 is still loading its weights"), Code.UNAVAILABLE),
    "invalid": (GenerationError("invalid", "the prompt has no tokens"), Code.INVALID_ARGUMENT),
    "overloaded": (GenerationError("overloaded", "256 requests are queued"), Code.RESOURCE_EXHAUSTED),
    "unavailable": (GenerationError("unavailable", "partition 1 has no SERVING node"), Code.UNAVAILABLE),
    "internal": (GenerationError("internal", "generation failed"), Code.INTERNAL),
}
SECRET = "secret-internal-path /srv/model/weights"


def _fault(request: bytes) -> Exception:
    name = request.decode()
    if name == "bug":
        return RuntimeError(SECRET)
    return FAULTS[name][0]


async def unary(request: bytes, context) -> bytes:
    if request == b"abort":
        await context.abort(Code.NOT_FOUND, "the servicer's own status")
    if request == b"fine":
        return b"ok"
    raise _fault(request)


async def server_stream(request: bytes, context):
    yield b"first"
    raise _fault(request)


async def bidi_stream(requests, context):
    async for request in requests:
        if request != b"fine":
            raise _fault(request)
        yield b"ok"


@pytest.fixture
async def faults():
    server = GrpcServer("test.Faults", "127.0.0.1", 0)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "BidiStream": grpc.stream_stream_rpc_method_handler(bidi_stream),
    }
    server.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Faults", handlers)])
    await server.start()
    channel = insecure_channel(f"127.0.0.1:{server.port}")
    yield channel
    await channel.close()
    await server.stop(0)


@pytest.mark.parametrize("name", sorted(FAULTS))
async def test_each_core_error_gets_its_status_in_every_kind_of_method(faults, name):
    exc, code = FAULTS[name]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await faults.unary_unary("/test.Faults/Unary")(name.encode())
    assert (err.value.code(), err.value.details()) == (code, str(exc))

    call = faults.unary_stream("/test.Faults/ServerStream")(name.encode())
    assert await call.read() == b"first"  # what was sent before the error still arrives
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == code

    async def requests():
        yield b"fine"
        yield name.encode()

    call = faults.stream_stream("/test.Faults/BidiStream")(requests())
    assert await call.read() == b"ok"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == code


async def test_an_unexpected_error_is_internal_logged_and_not_leaked(faults, caplog):
    caplog.set_level(logging.ERROR, logger="splitgpt.shells.error_mapping")

    async def unary_call():
        await faults.unary_unary("/test.Faults/Unary")(b"bug")

    async def stream_call():
        [reply async for reply in faults.unary_stream("/test.Faults/ServerStream")(b"bug")]

    for call in (unary_call, stream_call):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call()
        assert err.value.code() == Code.INTERNAL
        assert "secret" not in err.value.details() and "Traceback" not in err.value.details()
        assert "/test.Faults/" in err.value.details()  # where to look in the log
    logged = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert len(logged) == 2 and SECRET in caplog.text and "Traceback" in caplog.text


async def test_a_status_the_servicer_chose_passes_through_and_the_server_keeps_serving(faults):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await faults.unary_unary("/test.Faults/Unary")(b"abort")
    assert (err.value.code(), err.value.details()) == (Code.NOT_FOUND, "the servicer's own status")
    for _ in range(3):  # the wrapped handler is reused call after call
        assert await faults.unary_unary("/test.Faults/Unary")(b"fine") == b"ok"


@pytest.mark.parametrize(
    "code,expected",
    [
        (Code.FAILED_PRECONDITION, CacheMiss),
        (Code.INVALID_ARGUMENT, StepInputError),
        (Code.UNAVAILABLE, NodeFailed),
        (Code.DEADLINE_EXCEEDED, NodeFailed),
        (Code.RESOURCE_EXHAUSTED, NodeFailed),
        (Code.INTERNAL, StepFailed),  # up, but failed on this step: retried once, then the request fails
    ],
)
def test_a_node_status_comes_back_as_the_contract_error(code, expected):
    exc = error_from_status(code, "what the node said", "10.0.0.5:50100")
    assert type(exc) is expected
    assert "what the node said" in str(exc) and "10.0.0.5:50100" in str(exc)
