"""Token ids checked against a vocabulary, with no tokenizer library loaded.

Its own module so that the gRPC error table (shells.error_mapping), which every
service imports, can name `TokenIdError` without pulling `tokenizers` into the
nodes and the coordinator.
"""

from __future__ import annotations

from collections.abc import Iterable


class TokenIdError(ValueError):
    """Token ids outside [0, vocab_size): a client's bug, reported, never dropped."""


class ModelNotServed(LookupError):
    """A request names a model whose tokenizer this service does not hold."""


def check_token_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """The ids as a list; TokenIdError if any is outside [0, vocab_size)."""
    ids = list(ids)
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise TokenIdError(f"token ids out of range [0, {vocab_size}): {bad[:8]}{' ...' if len(bad) > 8 else ''}")
    return ids
