"""A node reads only its own tensors, in either key style."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2Model

from splitgpt.core import checkpoint
from splitgpt.core.checkpoint import BLOCK_PARAMS, CheckpointIndex, ModelSourceError, resolve_model_dir
from splitgpt.core.gpt2_partition import GPT2Partition
from splitgpt.core.kv_cache import SessionKV


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every tensor key read from any safetensors file."""
    seen: list[str] = []
    real = checkpoint.safe_open

    class Recording:
        def __init__(self, *args, **kwargs):
            self._f = real(*args, **kwargs)

        def __enter__(self):
            self._inner = self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def keys(self):
            return self._inner.keys()

        def get_tensor(self, key):
            seen.append(key)
            return self._inner.get_tensor(key)

    monkeypatch.setattr(checkpoint, "safe_open", Recording)
    return seen


def test_middle_partition_reads_only_its_blocks(tiny_checkpoint, reads):
    part = GPT2Partition.from_checkpoint(tiny_checkpoint, 1, 3, holds_head=False)
    expected = {f"transformer.h.{i}.{p}" for i in (1, 2) for p in BLOCK_PARAMS}
    assert set(reads) == expected and len(reads) == len(expected)
    assert not part.holds_head
    # The bytes it holds are exactly those tensors' bytes.
    index = CheckpointIndex(tiny_checkpoint)
    want = sum(
        t.numel() * t.element_size() for t in index.read(sorted(k.removeprefix("transformer.") for k in expected)).values()
    )
    assert part.parameter_bytes == want


def test_last_partition_holds_blocks_embedding_and_head(tiny_checkpoint, reads):
    part = GPT2Partition.from_checkpoint(tiny_checkpoint, 3, 4, holds_head=True)
    keys = {k.removeprefix("transformer.") for k in reads}
    assert keys == {f"h.3.{p}" for p in BLOCK_PARAMS} | {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"}
    assert part.lm_head is part.wte  # tied: one copy of the 50257 x d matrix


def test_first_partition_has_no_embedding(tiny_checkpoint, reads):
    GPT2Partition.from_checkpoint(tiny_checkpoint, 0, 1, holds_head=False)
    assert not any("wte" in k or "wpe" in k or "ln_f" in k for k in reads)


def test_unprefixed_keys_load_the_same_weights(tiny_checkpoint, hf_model, tmp_path):
    """The original Hub upload stores `h.0.attn...` (GPT2Model); both styles give one model."""
    base = GPT2Model(GPT2Config.from_pretrained(tiny_checkpoint))
    base.load_state_dict(hf_model.transformer.state_dict())
    base.save_pretrained(tmp_path, safe_serialization=True)
    assert not any(k.startswith("transformer.") for k in CheckpointIndex(tmp_path).names())
    prompt = [15496, 11, 616, 1438, 318]
    first = [GPT2Partition.from_checkpoint(d, 0, 2, False) for d in (tiny_checkpoint, tmp_path)]
    last = [GPT2Partition.from_checkpoint(d, 2, 4, True) for d in (tiny_checkpoint, tmp_path)]
    assert first[0].tensor_names == first[1].tensor_names and last[0].tensor_names == last[1].tensor_names
    assert first[0].parameter_bytes == first[1].parameter_bytes > 0
    # The same weights: the same logits, bit for bit, from the same input.
    logits = []
    for a, b in zip(first, last, strict=True):
        hidden = a.forward(b.embed(prompt, 0), [len(prompt)], [_kv(a)])
        logits.append(b.logits(b.forward(hidden, [len(prompt)], [_kv(b)])[-1:]))
    assert torch.equal(logits[0], logits[1])


def _kv(part: GPT2Partition) -> SessionKV:
    return SessionKV(part.n_local_layers, part.n_heads, part.head_dim, part.dtype, part.device)


def test_sharded_checkpoint_reads_across_files(tiny_checkpoint, tmp_path):
    """Tensors spread over several safetensors files are found by name."""
    index = CheckpointIndex(tiny_checkpoint)
    names = sorted(index.names())
    tensors = index.read(names)
    half = len(names) // 2
    save_file({n: tensors[n].contiguous() for n in names[:half]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({n: tensors[n].contiguous() for n in names[half:]}, tmp_path / "model-00002-of-00002.safetensors")
    (tmp_path / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    part = GPT2Partition.from_checkpoint(tmp_path, 0, 4, holds_head=True)
    assert part.parameter_count == sum(t.numel() for t in tensors.values())


def test_missing_directory_names_the_offline_way(tmp_path):
    with pytest.raises(ModelSourceError, match="tiny-model"):
        resolve_model_dir(str(tmp_path / "nope"))


def test_unreachable_hub_names_the_offline_way(monkeypatch):
    # conftest sets HF_HUB_OFFLINE: the hub client refuses at once, without a connection
    with pytest.raises(ModelSourceError, match="MODEL_ID=models/tiny-gpt2"):
        resolve_model_dir("gpt2-this-does-not-exist-locally")
