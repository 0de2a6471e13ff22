"""The benches' default model: a GPT-2-small-shaped checkpoint, random weights."""

from __future__ import annotations

from pathlib import Path

from ..core.tiny_model import GPT2_SMALL, write_checkpoint


def ensure_gpt2_small(model: Path) -> Path:
    """`model`, written first (random weights, GPT-2 small's geometry) if it holds no checkpoint yet."""
    if not (model / "config.json").exists():
        print(f"writing a random GPT-2-small checkpoint to {model}", flush=True)
        write_checkpoint(model, **GPT2_SMALL)
    return model
