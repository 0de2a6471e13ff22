"""One tokenizer service for several models: each request is tokenized with its model's tokenizer."""

from __future__ import annotations

import grpc
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from splitgpt.rpc import tokenizer_pb2, tokenizer_pb2_grpc
from splitgpt.shells.grpc_runtime import insecure_channel
from splitgpt.shells.tokenizer_service import TokenizerModelsError, TokenizerSettings, parse_models, start

from .test_tokenizer_service import offline_hub  # noqa: F401  (a fixture)


@pytest.fixture
def word_level(tmp_path):
    """A checkpoint directory whose tokenizer.json is a three-word vocabulary: nothing like GPT-2's."""
    tokenizer = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "hello": 1, "world": 2, "[UNK]": 3}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


@pytest.fixture
async def stub(offline_hub, word_level):  # noqa: F811
    settings = TokenizerSettings(model_id="gpt2", host="127.0.0.1", port=0, models=f"gpt2=gpt2,words={word_level}")
    server = await start(settings)
    async with insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield tokenizer_pb2_grpc.TokenizerStub(channel)
    await server.stop(grace_s=0)


async def test_each_model_is_tokenized_by_its_own_tokenizer(stub, word_level):
    gpt2 = await stub.Encode(tokenizer_pb2.EncodeRequest(text="hello world", model="gpt2"))
    words = await stub.Encode(tokenizer_pb2.EncodeRequest(text="hello world", model="words"))
    default = await stub.Encode(tokenizer_pb2.EncodeRequest(text="hello world"))
    assert list(gpt2.ids) == list(default.ids) == [31373, 995]
    assert list(words.ids) == [1, 2]
    info = await stub.Info(tokenizer_pb2.TokenizerInfoRequest(model="words"))
    assert (info.vocab_size, info.eos_token_id, info.source) == (4, 0, str(word_level / "tokenizer.json"))
    decoded = await stub.DecodeBatch(tokenizer_pb2.DecodeBatchRequest(items=[tokenizer_pb2.TokenIds(ids=[2, 1])], model="words"))
    assert list(decoded.texts) == ["world hello"]
    table = await stub.GetTokenBytes(tokenizer_pb2.TokenBytesRequest(model="gpt2"))
    assert len(table.tokens) == 50257


async def test_a_stream_decodes_with_the_model_its_first_message_names(stub):
    call = stub.DecodeStream()
    await call.write(tokenizer_pb2.DecodeStreamRequest(ids=[1], model="words"))
    assert (await call.read()).text == "hello"
    await call.write(tokenizer_pb2.DecodeStreamRequest(ids=[2]))  # the model holds for the whole stream
    second = (await call.read()).text
    await call.done_writing()
    rest = (await call.read()).text
    assert (second + rest).strip() == "world"


async def test_a_model_the_service_was_not_given_is_not_found(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Encode(tokenizer_pb2.EncodeRequest(text="x", model="gpt2-xl"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "gpt2-xl" in caught.value.details() and "words" in caught.value.details()


def test_the_models_setting_is_name_equals_model_pairs():
    assert parse_models("a=gpt2, b=/models/x=y ,") == {"a": "gpt2", "b": "/models/x=y"}
    with pytest.raises(TokenizerModelsError):
        parse_models("just-a-model")
