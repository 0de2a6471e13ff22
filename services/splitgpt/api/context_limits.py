"""Does a request fit the model's context? Checked before work where it can be.

Generating needs prompt + max_tokens <= n_ctx, and max_tokens >= 1, so a prompt
on its own may be at most n_ctx - 1 tokens. Each check raises the 400 that says
which field to change and by how much.
"""

from __future__ import annotations

from .errors import ApiError
from .schemas import ModelInfo

CONTEXT_EXCEEDED = "context_length_exceeded"


def check_settings(max_tokens: int, min_tokens: int, model: ModelInfo) -> None:
    if max_tokens > model.n_ctx:
        raise ApiError(
            422, "validation_error", f"max_tokens must be at most the model's context of {model.n_ctx}", param="max_tokens"
        )
    if min_tokens > max_tokens:
        raise ApiError(422, "validation_error", "min_tokens must not exceed max_tokens", param="min_tokens")


def check_prompt_chars(text: str, model: ModelInfo, max_chars_per_token: int | None) -> None:
    """Refuse, without tokenizing it, a text too long to fit in any tokenization.

    With at most L characters to a token, a text of C characters is at least
    ceil(C / L) tokens: past (n_ctx - 1) * L characters it cannot fit, whatever
    it says. This holds for byte-level BPE that tokenizes the text's own UTF-8
    bytes (GPT-2's: no normalizer), the only kind that serves a token table.
    Without one (`max_chars_per_token` None) there is no such bound and the
    body limit alone caps the tokenizer's work.
    """
    if max_chars_per_token is None:
        return
    room = model.n_ctx - 1
    if len(text) > room * max_chars_per_token:
        at_least = -(-len(text) // max_chars_per_token)
        raise ApiError(
            400,
            CONTEXT_EXCEEDED,
            f"the prompt is {len(text)} characters, so at least {at_least} tokens (no token covers more than "
            f"{max_chars_per_token} characters); the model's context of {model.n_ctx} tokens holds at most {room} "
            f"prompt tokens. Shorten the prompt.",
            param="text",
        )


def check_prompt_tokens(prompt_tokens: int, max_tokens: int, model: ModelInfo) -> None:
    room = model.n_ctx - 1  # at least one token must be generated
    if prompt_tokens > room:
        raise ApiError(
            400,
            CONTEXT_EXCEEDED,
            f"the prompt is {prompt_tokens} tokens: {prompt_tokens - room} too many for the model's context of "
            f"{model.n_ctx} tokens, which must also hold at least 1 generated token. Shorten the prompt by at least "
            f"{prompt_tokens - room} tokens (by {prompt_tokens + max_tokens - model.n_ctx} to keep max_tokens {max_tokens}).",
            param="text",
        )
    excess = prompt_tokens + max_tokens - model.n_ctx
    if excess > 0:
        raise ApiError(
            400,
            CONTEXT_EXCEEDED,
            f"the prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}: together they exceed the model's "
            f"context of {model.n_ctx} tokens by {excess}. Shorten the prompt or lower max_tokens to at most "
            f"{model.n_ctx - prompt_tokens}.",
            param="max_tokens",
        )
