"""A contiguous slice of GPT-2's transformer blocks, run for a batch of sequences.

Selective batching (Orca): the linear layers and layer norms run once over the
tokens of every sequence of the step, packed into one [tokens, d] matrix;
attention runs per sequence against that sequence's own KV history, so no
padding is computed. The math follows GPT-2 exactly (Conv1D is x @ W + b,
pre-LN blocks, the model's own activation and scaling), so the chain of
partitions gives the same hidden states as one Hugging Face process (bit for
bit with the reference kernels, to float rounding with oneDNN's; see
linear_kernels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GPT2Config

from .checkpoint import CheckpointIndex, load_config, partition_tensor_names
from .kv_cache import SessionKV
from .linear_kernels import (
    DECODE_COPY_MAX_ROWS,
    PARALLEL_MIN_WEIGHT_BYTES,
    Linear,
    head_product,
    make_linear,
    make_linear_with_activation,
    pack_head_weight,
    resolve_kernels,
)


@dataclass(frozen=True)
class Block:
    ln_1: tuple[torch.Tensor, torch.Tensor]
    c_attn: Linear  # d -> 3d
    attn_proj: Linear
    ln_2: tuple[torch.Tensor, torch.Tensor]
    c_fc_act: Linear  # d -> 4d, then the activation
    mlp_proj: Linear
    attn_scale: float


class GPT2Partition:
    def __init__(
        self,
        config: GPT2Config,
        start: int,
        end: int,
        holds_head: bool,
        tensors: dict[str, torch.Tensor],
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        kernels: str = "auto",
        pack_head: bool = False,
        decode_copy: bool = False,
    ) -> None:
        """`decode_copy`: the block matrices (and a packed head) kept plain as well,
        for steps of a few rows (linear_kernels.DECODE_COPY_MAX_ROWS); used with
        oneDNN only."""
        if not 0 <= start < end <= config.n_layer:
            raise ValueError(f"blocks [{start}, {end}) outside the model's {config.n_layer}")
        self.config = config
        self.start, self.end = start, end
        self.holds_head = holds_head
        self.device = torch.device(device)
        self.dtype = dtype
        self.hidden_size = config.n_embd
        self.n_heads = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.eps = config.layer_norm_epsilon
        self.kernels = resolve_kernels(kernels, self.device, dtype)
        self.decode_copy = decode_copy and self.kernels == "onednn"
        t = {k: v.to(device=self.device, dtype=dtype) for k, v in tensors.items()}
        # The vectors (biases, norms) are kept as they are; read from safetensors
        # they are views of the checkpoint's file mapping, and a view keeps the whole
        # mapping, with every page the packing read, in this process's resident set
        # (1.7 GB of a gpt2-xl node's 3.6). Copied, the mapping goes with the plain matrices.
        t = {k: v.clone() if v.dim() == 1 else v for k, v in t.items()}
        self.tensor_names = sorted(t)
        # Counted from the checkpoint's tensors: the kernels may hold them in another layout.
        self.parameter_count = sum(v.numel() for v in t.values())
        self.parameter_bytes = sum(v.numel() * v.element_size() for v in t.values())
        self.blocks = [self._block(t, i) for i in range(start, end)]
        # The copy repeats every block matrix (the 2-d tensors under h.), plain.
        matrices = [v for name, v in t.items() if name.startswith("h.") and v.dim() == 2]
        self.decode_copy_bytes = sum(v.numel() * v.element_size() for v in matrices) if self.decode_copy else 0
        # Whether a step is worth several threads: by its largest block matrix, the
        # MLP's d x 4d (linear_kernels.PARALLEL_MIN_WEIGHT_BYTES).
        largest = max(v.numel() * v.element_size() for name, v in t.items() if name.startswith("h."))
        self.blocks_parallel = largest >= PARALLEL_MIN_WEIGHT_BYTES
        self.head_plain: torch.Tensor | None = None
        if holds_head:
            self.wte, self.wpe = t["wte.weight"], t["wpe.weight"]
            self.ln_f = (t["ln_f.weight"], t["ln_f.bias"])
            self.lm_head = t.get("lm_head.weight", self.wte)
            if pack_head and self.decode_copy:
                # The head is the largest matrix of all, and the packed layout serves
                # it one row as slowly as it does the blocks' (5.6 against 4.0 ms at
                # GPT-2's size, 13.9 against 10.6 at gpt2-xl's). The copy is the node's
                # own memory: read through the checkpoint's mapping the gpt2-xl head
                # streamed slower than the packed one (15.1 ms).
                self.head_plain = self.lm_head.clone()
                self.decode_copy_bytes += self.head_plain.numel() * self.head_plain.element_size()
            if pack_head:
                self.lm_head = pack_head_weight(self.kernels, self.lm_head)

    @classmethod
    def from_checkpoint(
        cls,
        model_dir,
        start: int,
        end: int,
        holds_head: bool,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        kernels: str = "auto",
        pack_head: bool = False,
        decode_copy: bool = False,
    ) -> GPT2Partition:
        config = load_config(model_dir)
        index = CheckpointIndex(model_dir)
        names = partition_tensor_names(config, start, end, holds_head, index)
        return cls(config, start, end, holds_head, index.read(names), device, dtype, kernels, pack_head, decode_copy)

    def _block(self, t: dict[str, torch.Tensor], i: int) -> Block:
        p = f"h.{i}."
        scale = self.head_dim**-0.5 if self.config.scale_attn_weights else 1.0
        if self.config.scale_attn_by_inverse_layer_idx:
            scale /= float(i + 1)
        pair = lambda name: (t[p + name + ".weight"], t[p + name + ".bias"])  # noqa: E731
        linear = lambda name: make_linear(self.kernels, *pair(name), self.decode_copy)  # noqa: E731
        return Block(
            ln_1=pair("ln_1"),
            c_attn=linear("attn.c_attn"),
            attn_proj=linear("attn.c_proj"),
            ln_2=pair("ln_2"),
            c_fc_act=make_linear_with_activation(
                self.kernels, *pair("mlp.c_fc"), self.config.activation_function, self.decode_copy
            ),
            mlp_proj=linear("mlp.c_proj"),
            attn_scale=scale,
        )

    @property
    def weight_bytes(self) -> int:
        """What this node holds in weights: its share of the checkpoint and the decode copy."""
        return self.parameter_bytes + self.decode_copy_bytes

    @property
    def n_local_layers(self) -> int:
        return self.end - self.start

    @torch.inference_mode()
    def embed(self, token_ids: list[int], position: int) -> torch.Tensor:
        """wte[token] + wpe[position]: [len, d]."""
        return self.embed_at(token_ids, list(range(position, position + len(token_ids))))

    @torch.inference_mode()
    def embed_at(self, token_ids: list[int], positions: list[int]) -> torch.Tensor:
        """wte[token_ids[i]] + wpe[positions[i]] for each i: [len, d]."""
        if not self.holds_head:
            raise RuntimeError("only the last partition holds the embedding")
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        return self.wte[ids] + self.wpe[pos]

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, lengths: list[int], caches: list[SessionKV]) -> torch.Tensor:
        """Run the blocks over packed rows `x` ([sum(lengths), d], sequence i
        owning `lengths[i]` consecutive rows), appending to each sequence's cache.

        Returns the output rows, packed the same way. Caches are written but
        not committed: the caller commits once the whole step has succeeded.
        """
        x = x.to(device=self.device, dtype=self.dtype)
        for local, block in enumerate(self.blocks):
            x = x + self._attention(local, block, F.layer_norm(x, (self.hidden_size,), *block.ln_1, self.eps), lengths, caches)
            h = F.layer_norm(x, (self.hidden_size,), *block.ln_2, self.eps)
            x = x + block.mlp_proj(block.c_fc_act(h))
        return x

    def _attention(self, local: int, block: Block, x: torch.Tensor, lengths: list[int], caches: list[SessionKV]) -> torch.Tensor:
        """Causal self-attention, each sequence over its own cached history.

        The loop runs once per sequence, so it is written for few tensor ops
        an iteration: at decode each op's dispatch costs about as much as its
        arithmetic. Queries, new keys/values and the output are per-head views
        made once for the whole step; per sequence there is one cache append,
        then at a float32 decode two bmm products (for one query row 1.2-1.5x
        faster than scaled_dot_product_attention, whose setup dominates at
        that size) and otherwise the fused kernel.
        """
        d, nh, hd = self.hidden_size, self.n_heads, self.head_dim
        qkv = block.c_attn(x)  # [rows, 3d]: q | k | v
        rows = qkv.shape[0]
        queries = qkv[:, :d].view(rows, nh, hd).transpose(0, 1)  # [heads, rows, hd]
        new_kv = qkv[:, d:].view(rows, 2, nh, hd).permute(1, 2, 0, 3)  # [2, heads, rows, hd]
        out = torch.empty(rows, nh, hd, dtype=qkv.dtype, device=qkv.device)
        heads_out = out.transpose(0, 1)  # [heads, rows, hd], a view of out
        # One query row in float32: two bmm products. In bfloat16 the CPU's bmm
        # copies its operands first (4-11x slower than the fused kernel at 16-1000
        # positions here), so a bf16 decode takes the fused kernel, like a prefill.
        decode_by_bmm = qkv.dtype == torch.float32
        offset = 0
        for n, cache in zip(lengths, caches, strict=True):
            end = offset + n
            keys, values = cache.append(local, new_kv[:, :, offset:end])  # each [heads, T, hd]
            if n == 1 and decode_by_bmm:  # decode: one query sees the whole history
                scores = torch.bmm(queries[:, offset:end], keys.transpose(1, 2))  # [heads, 1, T]
                if block.attn_scale != 1.0:
                    scores.mul_(block.attn_scale)
                torch.bmm(scores.softmax(-1), values, out=heads_out[:, offset:end])
            else:  # prefill, a chunk after a cached prefix, or a bf16 decode: query i sees keys up to T - n + i
                past = keys.shape[1] - n
                mask = None if past == 0 or n == 1 else torch.ones(n, past + n, dtype=torch.bool, device=self.device).tril(past)
                heads_out[:, offset:end] = F.scaled_dot_product_attention(
                    queries[None, :, offset:end], keys[None], values[None],
                    attn_mask=mask, is_causal=past == 0 and n > 1, scale=block.attn_scale,
                )[0]  # fmt: skip
            offset = end
        return block.attn_proj(out.view(rows, d))

    @torch.inference_mode()
    def logits(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """ln_f and the (tied) head on final hidden rows [B, d] -> [B, vocab]."""
        h = F.layer_norm(last_hidden.to(self.dtype), (self.hidden_size,), *self.ln_f, self.eps)
        if self.head_plain is not None and h.shape[0] <= DECODE_COPY_MAX_ROWS:
            return F.linear(h, self.head_plain)
        return head_product(self.kernels, h, self.lm_head)
