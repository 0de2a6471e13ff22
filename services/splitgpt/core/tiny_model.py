"""Small random GPT-2 checkpoints written by transformers itself, for offline use."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

GPT2_VOCAB_SIZE = 50257
# GPT-2-small geometry: the model the benchmarks and memory reports talk about.
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024)


def write_checkpoint(
    directory: Path,
    n_layer: int = 4,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 256,
    seed: int = 0,
    init_std: float = 0.2,
    with_tokenizer: bool = True,
) -> Path:
    """Write a randomly initialised GPT-2 (safetensors) and the GPT-2 tokenizer files.

    `init_std` larger than GPT-2's 0.02 makes the random model's next-token
    distribution peaked, so its greedy text varies with the prompt instead of
    repeating one token.
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
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    if with_tokenizer:
        from .tokenization import write_gpt2_tokenizer_files

        write_gpt2_tokenizer_files(directory)
    return directory
