"""How the gateway decodes token streams: locally from the token-bytes table, else remotely."""

from __future__ import annotations

import grpc
import pytest

from splitgpt.api.backends import Backends, DecodeStream, LocalDecodeStream
from splitgpt.api.settings import ApiSettings


class TokenizerWithoutTable:
    """A tokenizer service whose vocabulary is not byte-level, or one that is unreachable."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code
        self.asked = 0

    async def GetTokenBytes(self, request, timeout=None):
        self.asked += 1
        raise grpc.aio.AioRpcError(self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="no table")

    def DecodeStream(self, timeout=None):
        return object()  # the call object; not used by these tests


@pytest.fixture
async def backends():
    b = Backends(ApiSettings(tokenizer_address="127.0.0.1:1", coordinator_address="127.0.0.1:1"))
    yield b
    await b.close()


async def test_a_tokenizer_that_is_not_byte_level_decodes_every_stream_remotely(backends):
    backends.tokenizers[0] = tokenizer = TokenizerWithoutTable(grpc.StatusCode.FAILED_PRECONDITION)
    assert isinstance(await backends.decode_stream(), DecodeStream)
    assert isinstance(await backends.decode_stream(), DecodeStream)
    assert tokenizer.asked == 1  # its answer is kept


async def test_an_unreachable_tokenizer_is_asked_again_after_a_while(backends, monkeypatch):
    backends.tokenizers[0] = unreachable = TokenizerWithoutTable(grpc.StatusCode.UNAVAILABLE)
    assert isinstance(await backends.decode_stream(), DecodeStream)
    assert isinstance(await backends.decode_stream(), DecodeStream)
    assert unreachable.asked == 1  # not once per request: each would wait out its deadline
    monkeypatch.setattr(backends._token_tables[""], "retry_at", 0.0)  # the while has passed

    class WithTable:
        async def GetTokenBytes(self, request, timeout=None):
            class Reply:
                tokens = [b"a", b"\xe4\xb8", b"\x96"]  # "a", then "世" split over two tokens

            return Reply()

    backends.tokenizers[0] = WithTable()
    stream = await backends.decode_stream()
    assert isinstance(stream, LocalDecodeStream)
    assert [await stream.push([0]), await stream.push([1]), await stream.push([2])] == ["a", "", "世"]
