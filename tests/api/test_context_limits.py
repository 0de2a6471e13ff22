"""The prompt-length bound the gateway checks before tokenizing must never refuse a prompt that fits.

It says: no token stands for more than L characters (L from the tokenizer
service's token-bytes table), so a text of C characters is at least C / L
tokens. Checked here against the real GPT-2 tokenizer on texts built to be as
few tokens per character as possible: GPT-2's longest tokens, repeated.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitgpt.api.backends import Backends
from splitgpt.api.context_limits import check_prompt_chars
from splitgpt.api.errors import ApiError
from splitgpt.api.schemas import ModelInfo
from splitgpt.api.settings import ApiSettings
from splitgpt.core.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return load_tokenizer(str(tiny_checkpoint))


@pytest.fixture(scope="module")
def max_chars(stack) -> int:
    """What the gateway's Backends derive from the running tokenizer service."""
    import asyncio

    async def ask():
        settings = ApiSettings(
            tokenizer_address=f"127.0.0.1:{stack.grpc_base + 1}",
            coordinator_address="127.0.0.1:1",
            internal_token=stack.internal_token,
        )
        backends = Backends(settings)
        try:
            return await backends.max_chars_per_token()
        finally:
            await backends.close()

    return asyncio.run(ask())


def test_the_bound_is_gpt2s_longest_token(tokenizer, max_chars):
    pieces = [bytes(b).decode("utf-8", "replace") for b in tokenizer.token_bytes()]
    assert max_chars == 66 == max(len(p) for p in pieces if "\ufffd" not in p)


@st.composite
def dense_texts(draw, long_pieces: list[str]):
    """Concatenations of the longest tokens, with some ordinary text between them."""
    parts = draw(st.lists(st.sampled_from(long_pieces) | st.text(max_size=8), min_size=1, max_size=40))
    return "".join(parts)


def test_no_text_is_fewer_tokens_than_the_bound_says(tokenizer, max_chars):
    table = tokenizer.token_bytes()
    decoded = [(bytes(b).decode("utf-8", "replace"), i) for i, b in enumerate(table)]
    long_pieces = [p for p, _ in sorted(decoded, key=lambda x: -len(x[0]))[:50] if "\ufffd" not in p]

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(dense_texts(long_pieces))
    def bound_holds(text):
        assert len(tokenizer.encode(text)) >= math.ceil(len(text) / max_chars)

    bound_holds()


def test_the_check_refuses_only_past_the_bound():
    model = ModelInfo(model_id="m", n_ctx=128, vocab_size=50257, eos_token_id=50256)
    check_prompt_chars("a" * (127 * 66), model, 66)  # could be 127 tokens: let through to the tokenizer
    with pytest.raises(ApiError) as refused:
        check_prompt_chars("a" * (127 * 66 + 1), model, 66)
    assert refused.value.status == 400 and refused.value.param == "text"
    check_prompt_chars("a" * 10**6, model, None)  # no table, no bound: the body limit caps the work
