"""Random GPT-2 checkpoints written by transformers itself, for offline use: small
ones for the tests, and the real geometries (gpt2 to gpt2-xl) for memory and speed
measurements where the Hub cannot be reached."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from .partitioning import block_parameters

GPT2_VOCAB_SIZE = 50257
# GPT-2-small geometry: the model the benchmarks and memory reports talk about.
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024)
# The Hub's GPT-2 sizes, by their model ids (124 M, 355 M, 774 M and 1.56 B parameters).
GEOMETRIES = {
    "gpt2": GPT2_SMALL,
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16, n_positions=1024),
    "gpt2-large": dict(n_layer=36, n_embd=1280, n_head=20, n_positions=1024),
    "gpt2-xl": dict(n_layer=48, n_embd=1600, n_head=25, n_positions=1024),
}
# Shards as the Hub ships its larger checkpoints (model-0000i-of-0000n.safetensors
# and model.safetensors.index.json): a node reads only the shards of its tensors.
MAX_SHARD_SIZE = "2GB"


def parameter_count(n_layer: int, n_embd: int, n_positions: int, vocab_size: int = GPT2_VOCAB_SIZE, **_) -> int:
    """Parameters of a GPT-2 of this geometry (the head tied to the embedding)."""
    return vocab_size * n_embd + n_positions * n_embd + n_layer * block_parameters(n_embd) + 2 * n_embd


def write_checkpoint(
    directory: Path,
    n_layer: int = 4,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 256,
    seed: int = 0,
    init_std: float = 0.2,
    with_tokenizer: bool = True,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Write a randomly initialised GPT-2 (safetensors, sharded above MAX_SHARD_SIZE)
    and the GPT-2 tokenizer files.

    `init_std` larger than GPT-2's 0.02 makes the random model's next-token
    distribution peaked, so its greedy text varies with the prompt instead of
    repeating one token. `say`: where progress goes while a big one is written
    (building takes tens of seconds and writing several GB more).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = GPT2Config(
        vocab_size=GPT2_VOCAB_SIZE,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        initializer_range=init_std,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    say = say or (lambda _: None)
    total = parameter_count(n_layer, n_embd, n_positions) * 4  # float32 bytes
    started = time.monotonic()
    say(f"building a random GPT-2 ({n_layer} blocks, {n_embd} wide): {total / 1e9:.2f} GB in float32 ...")
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    say(f"built in {time.monotonic() - started:.0f}s; writing safetensors to {directory} ...")
    with _ReportsWriting(directory, total, say):
        model.save_pretrained(directory, safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
    del model
    if with_tokenizer:
        from .tokenization import write_gpt2_tokenizer_files

        write_gpt2_tokenizer_files(directory)
    return directory


class _ReportsWriting:
    """Says every few seconds how much of the checkpoint is on disk, while it is written."""

    def __init__(self, directory: Path, total_bytes: int, say: Callable[[str], None], every_s: float = 5.0) -> None:
        self.directory, self.total, self.say, self.every_s = directory, total_bytes, say, every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="checkpoint-progress", daemon=True)

    def __enter__(self) -> _ReportsWriting:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.say(f"wrote {self._written() / 1e9:.2f} GB")

    def _written(self) -> int:
        return sum(f.stat().st_size for f in self.directory.glob("*.safetensors"))

    def _watch(self) -> None:
        while not self._done.wait(self.every_s):
            self.say(f"  {self._written() / 1e9:.2f} of {self.total / 1e9:.2f} GB written")
