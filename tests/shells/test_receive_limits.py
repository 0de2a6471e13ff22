"""What a gRPC service takes off the wire: nothing from a caller without the
token, and from one with it no message larger than the service legitimately
receives (issue 18: every server used to accept 512 MiB, read in full before
the token was even looked at).

Real servers on free ports, called with raw bytes: a message need not parse to
be read, and reading is what a refusal must not do.
"""

from __future__ import annotations

import grpc
import pytest

from splitgpt.shells.grpc_runtime import SERVICE_RECEIVE_BYTES, client_channel, insecure_channel
from splitgpt.shells.internal_auth import InternalSecurity
from splitgpt.shells.node_service import NodeSettings, node_receive_limit
from splitgpt.shells.node_service import start as start_node
from splitgpt.shells.tokenizer_service import TokenizerSettings
from splitgpt.shells.tokenizer_service import start as start_tokenizer

TOKEN = "test-token-0123456789abcdef"


async def raw_call(channel: grpc.aio.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    """A unary call carrying `payload` as its message; the status it ends with."""
    call = channel.unary_unary(method)  # no serializers: bytes in, bytes out
    try:
        await call(payload, timeout=30)
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def tokenizer(tiny_checkpoint):
    server = await start_tokenizer(TokenizerSettings(model_id=str(tiny_checkpoint), port=0, internal_token=TOKEN))
    yield f"127.0.0.1:{server.port}"
    await server.stop(0)


async def test_a_tokenless_call_is_refused_before_its_message_is_read(tokenizer):
    # Larger than the service takes: had the server read it, the call would end
    # RESOURCE_EXHAUSTED; refused first, it ends UNAUTHENTICATED.
    oversized = b"\x0a" * (SERVICE_RECEIVE_BYTES + 1024)
    async with insecure_channel(tokenizer) as channel:
        assert await raw_call(channel, "/splitgpt.v1.Tokenizer/Encode", oversized) == grpc.StatusCode.UNAUTHENTICATED
        # A streaming method the same way.
        stream = channel.stream_stream("/splitgpt.v1.Tokenizer/DecodeStream")()
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stream.write(oversized)
            await stream.read()
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_tokenizer_takes_a_few_megabytes_and_no_more(tokenizer):
    async with client_channel(tokenizer, InternalSecurity(token=TOKEN)) as channel:
        status = await raw_call(channel, "/splitgpt.v1.Tokenizer/Encode", b"\x0a" * (SERVICE_RECEIVE_BYTES + 1024))
        assert status == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Within the limit the message is read, and parsed: field 1 (text), 1 MB long.
        text = b"a" * 1_000_000
        message = b"\x0a" + _varint(len(text)) + text
        assert await raw_call(channel, "/splitgpt.v1.Tokenizer/Encode", message) == grpc.StatusCode.OK


async def test_a_node_takes_the_largest_step_its_kv_budget_admits_and_no_more(tiny_checkpoint):
    settings = NodeSettings(
        model_id=str(tiny_checkpoint), node_id="n0", partition=0, num_partitions=1, port=0, internal_token=TOKEN,
        kv_max_tokens=4096,
    )  # fmt: skip
    limit = node_receive_limit(settings)
    assert limit == 4096 * 64 * 4 + SERVICE_RECEIVE_BYTES  # the tiny model is 64 wide
    server = await start_node(settings)
    try:
        async with client_channel(f"127.0.0.1:{server.port}", InternalSecurity(token=TOKEN)) as channel:
            step = "/splitgpt.v1.PartitionNode/Step"
            assert await raw_call(channel, step, b"\x00" * (limit + 1)) == grpc.StatusCode.RESOURCE_EXHAUSTED
            # At the limit it is read: a StepRequest of no sequences, padded to the limit
            # with an unknown field (which protobuf skips), refused by the node itself.
            padding = limit - 5  # 1 tag byte, a 4-byte length
            message = b"\x7a" + _varint(padding) + b"\x00" * padding
            assert len(message) == limit
            assert await raw_call(channel, step, message) not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNKNOWN)
        async with insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert await raw_call(channel, step, b"\x00" * (limit + 1)) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(0)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
