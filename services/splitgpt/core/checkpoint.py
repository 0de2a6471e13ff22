"""Find a GPT-2 checkpoint and read only the tensors one partition needs.

A node opens the checkpoint's safetensors lazily (`safe_open`) and pulls the
names it serves, so a 1.5 B model never has to fit in one process. Both key
styles are accepted: `transformer.h.3.attn.c_attn.weight` (GPT2LMHeadModel)
and `h.3.attn.c_attn.weight` (GPT2Model, the original Hub upload).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import GPT2Config

log = logging.getLogger(__name__)

BLOCK_PARAMS = (
    "ln_1.weight", "ln_1.bias",
    "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias",
    "ln_2.weight", "ln_2.bias",
    "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
)  # fmt: skip
OFFLINE_HINT = (
    "Offline, run `make up-tiny` in the splitgpt checkout (a small random GPT-2 with the real tokenizer), "
    "or point MODEL_ID at a local checkpoint directory, for example one made with "
    "`splitgpt tiny-model models/tiny-gpt2` (then MODEL_ID=models/tiny-gpt2)."
)


class ModelSourceError(RuntimeError):
    pass


def resolve_model_dir(model_id: str) -> Path:
    """A local checkpoint directory as is; otherwise a Hub id, downloaded once."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
        return path
    if path.exists() or model_id.startswith((".", "/")):
        raise ModelSourceError(f"MODEL_ID={model_id!r} is not a checkpoint directory. {OFFLINE_HINT}")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id=model_id,
                allow_patterns=["config.json", "*.safetensors", "model.safetensors.index.json"],
            )
        )
    except Exception as exc:  # the hub client raises many kinds; all mean "not available"
        raise ModelSourceError(
            f"could not get {model_id!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). {OFFLINE_HINT}"
        ) from exc


def load_config(model_dir: Path) -> GPT2Config:
    config = GPT2Config.from_pretrained(model_dir)
    if config.model_type != "gpt2":
        raise ModelSourceError(f"{model_dir} holds a {config.model_type!r} model; splitgpt serves GPT-2 checkpoints")
    return config


@dataclass(frozen=True)
class _Location:
    file: Path
    key: str


class CheckpointIndex:
    """Canonical tensor name (`h.3.attn.c_attn.weight`, `wte.weight`, ...) -> where it lives."""

    def __init__(self, model_dir: Path | str) -> None:
        self.model_dir = model_dir = Path(model_dir)
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise ModelSourceError(f"{model_dir} has no *.safetensors file; save the checkpoint with safetensors")
        self._where: dict[str, _Location] = {}
        for file in files:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    self._where[_canonical(key)] = _Location(file, key)

    def names(self) -> set[str]:
        return set(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Read exactly `names`, opening each file once."""
        missing = [n for n in names if n not in self._where]
        if missing:
            raise ModelSourceError(f"checkpoint {self.model_dir} lacks {missing[:5]}")
        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self._where[n].file, []).append(n)
        out: dict[str, torch.Tensor] = {}
        for file, file_names in by_file.items():
            with safe_open(file, framework="pt") as f:
                for n in file_names:
                    out[n] = f.get_tensor(self._where[n].key)
        return out


def partition_tensor_names(config: GPT2Config, start: int, end: int, holds_head: bool, index: CheckpointIndex) -> list[str]:
    """The tensors a partition serving blocks [start, end) must hold.

    The last partition holds ln_f and the head; with GPT-2's tied weights the
    head is wte, so it also does the embedding (wte + wpe) and no other node
    carries the 38.6 M-parameter matrix.
    """
    names = [f"h.{i}.{p}" for i in range(start, end) for p in BLOCK_PARAMS]
    if holds_head:
        names += ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
        if not config.tie_word_embeddings and "lm_head.weight" in index:
            names.append("lm_head.weight")
    return names


def _canonical(key: str) -> str:
    return key.removeprefix("transformer.")
