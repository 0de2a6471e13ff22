"""Streaming detokenization from a table of each token's bytes.

In byte-level BPE (GPT-2) every token stands for a fixed byte string, and the
text of a sequence is the UTF-8 decoding (invalid bytes replaced) of their
concatenation. With that table a stream is decoded by Python's incremental
UTF-8 decoder, which holds back a character split across tokens until it is
whole: microseconds a token, where a round trip to the tokenizer service per
token cost the gateway a quarter of its CPU. The tokenizer service stays the
owner of the vocabulary: it serves the table (`GetTokenBytes`).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted: char -> byte.

    Bytes that are printable Latin-1 stand for themselves; the other 68 are
    moved, in order, to the code points from 256 up.
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    moved = [b for b in range(256) if b not in kept]
    alphabet = {chr(b): b for b in kept}
    alphabet.update({chr(256 + i): b for i, b in enumerate(moved)})
    return alphabet


def token_bytes(tokenizer: Tokenizer) -> list[bytes] | None:
    """Each id's bytes (index = id); None if the tokenizer does not decode
    byte-level, since its text is then not the concatenation of per-token pieces."""
    if not isinstance(tokenizer.decoder, decoders.ByteLevel):
        return None
    alphabet = _byte_level_alphabet()
    added = {i: t.content.encode() for i, t in tokenizer.get_added_tokens_decoder().items()}
    table = []
    for token_id in range(tokenizer.get_vocab_size(with_added_tokens=True)):
        if token_id in added:
            table.append(added[token_id])
            continue
        token = tokenizer.id_to_token(token_id)
        if token is None or any(ch not in alphabet for ch in token):
            return None  # a hole in the ids, or a token outside the byte alphabet
        table.append(bytes(alphabet[ch] for ch in token))
    return table


class ByteTableDecoder:
    """Text for a stream of token ids, emitted as soon as each character is whole."""

    def __init__(self, table: Sequence[bytes]) -> None:
        self._table = table
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if any(not 0 <= i < len(self._table) for i in ids):
            raise ValueError(f"token ids outside the vocabulary [0, {len(self._table)}): {ids[:8]}")
        return self._utf8.decode(b"".join([self._table[i] for i in ids]))

    def flush(self) -> str:
        """Whatever is held back (an unfinished character becomes U+FFFD); the decoder starts afresh."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
