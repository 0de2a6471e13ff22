"""A split that follows each node's memory: blocks in proportion to what each
node has left for them, refused before anything loads when it cannot fit.

What a node holds (measured on the GPT-2 geometries, float32 and bfloat16):
its blocks' weights (12 d^2 + 13 d parameters a block), on the last node also
the embedding (wte + wpe) and the head's packed copy for oneDNN (the plain wte
stays in the checkpoint's file mapping: page cache, not the node's own), and
the process itself (Python, torch, gRPC: RUNTIME_BYTES). The KV cache comes on
top, bounded by the node's token budget (SPLITGPT_NODE_KV_MAX_TOKENS). The plan
leaves out the decode copy (linear_kernels): a node holds one only where it
fits on top of the plan (wants_decode_copy), so the copy never refuses a plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .partitioning import BlockRange, PartitionError, block_parameters

# A node's resident memory with no weights: the interpreter, torch, gRPC, the
# allocator's own. Measured here: 0.25 GB for a node of the tiny test model
# after warm-up; a margin on top for the loading's transient copies.
RUNTIME_BYTES = 512 * 2**20


class MemoryPlanError(PartitionError):
    pass


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """`4G`, `512M`, `1.5G`, `4Gi`, `2000000000` (binary units, as Kubernetes' Gi and docker's g)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise MemoryPlanError(f"memory {text!r}: write it like 4G, 512M or 1.5G")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_budgets(text: str, n_parts: int) -> list[int]:
    """One value for every node, or one per partition in order (`4G,2G,2G,2G`)."""
    values = [parse_bytes(v) for v in text.split(",")]
    if len(values) == 1:
        return values * n_parts
    if len(values) != n_parts:
        raise MemoryPlanError(f"{len(values)} memory budgets given for {n_parts} partitions: give one, or one each")
    return values


@dataclass(frozen=True)
class Geometry:
    n_layer: int
    n_embd: int
    n_positions: int
    vocab_size: int
    dtype_bytes: int  # 4 for float32, 2 for bfloat16 and float16
    pack_head: bool = True

    @property
    def block_bytes(self) -> int:
        return block_parameters(self.n_embd) * self.dtype_bytes

    @property
    def block_matrix_bytes(self) -> int:
        """A block's four matrices (12 d^2 parameters), what a decode copy repeats."""
        return 12 * self.n_embd * self.n_embd * self.dtype_bytes

    @property
    def head_bytes(self) -> int:
        """What the last node holds besides its blocks."""
        embedding = (self.vocab_size + self.n_positions + 2) * self.n_embd * self.dtype_bytes
        packed = self.vocab_size * self.n_embd * self.dtype_bytes if self.pack_head else 0
        return embedding + packed

    def decode_copy_bytes(self, blocks: int, last: bool) -> int:
        """What a decode copy adds: the block matrices, and the last node's packed head."""
        head = self.vocab_size * self.n_embd * self.dtype_bytes if last and self.pack_head else 0
        return blocks * self.block_matrix_bytes + head

    def need(self, blocks: int, last: bool) -> int:
        """A node's resident bytes, its KV cache aside."""
        return RUNTIME_BYTES + blocks * self.block_bytes + (self.head_bytes if last else 0)


def memory_split(geometry: Geometry, budgets: list[int]) -> list[BlockRange]:
    """Contiguous ranges, blocks in proportion to each budget's room for blocks."""
    n, parts = geometry.n_layer, len(budgets)
    if not 1 <= parts <= n:
        raise MemoryPlanError(f"{parts} partitions for {n} blocks: each needs at least one")
    room = [b - geometry.need(0, i == parts - 1) for i, b in enumerate(budgets)]
    most = [max(0, r // geometry.block_bytes) for r in room]  # blocks each can hold
    short = [i for i in range(parts) if most[i] < 1]
    if short or sum(most) < n:
        # The plan refused: proportional shares, each named with what it would need.
        shares = _proportional([max(r, 1) for r in room], n)
        over = [i for i in range(parts) if geometry.need(shares[i], i == parts - 1) > budgets[i]]
        raise MemoryPlanError(
            f"the model does not fit: {n} blocks of {_gb(geometry.block_bytes)} need more than the budgets hold "
            f"(room for {sum(most)}). "
            + "; ".join(
                f"partition {i} would hold {shares[i]} blocks{' and the head' if i == parts - 1 else ''}: "
                f"{_gb(geometry.need(shares[i], i == parts - 1))} against a budget of {_gb(budgets[i])}"
                for i in (over or short)
            )
        )
    blocks = _proportional([r for r in room], n)
    # Rounding may give a node one more than it holds: move it to one with room.
    for i in range(parts):
        while blocks[i] > most[i]:
            j = max((k for k in range(parts) if blocks[k] < most[k]), key=lambda k: most[k] - blocks[k])
            blocks[i] -= 1
            blocks[j] += 1
    ranges, start = [], 0
    for b in blocks:
        ranges.append((start, start + b))
        start += b
    return ranges


def check_budget(geometry: Geometry, blocks: int, last: bool, budget: int, who: str) -> None:
    """A node's own check before it loads anything."""
    need = geometry.need(blocks, last)
    if need > budget:
        raise MemoryPlanError(
            f"{who} needs {_gb(need)} for {blocks} blocks{' and the head' if last else ''} "
            f"({_gb(RUNTIME_BYTES)} of it the process itself), more than its memory budget of {_gb(budget)}: "
            f"give it more memory, or fewer blocks (a memory split: splitgpt up --node-memory)"
        )


def _proportional(weights: list[int], total: int) -> list[int]:
    """`total` shared in proportion to `weights`, each at least 1, by largest remainder."""
    s = sum(weights)
    exact = [total * w / s for w in weights]
    out = [max(1, int(x)) for x in exact]
    while sum(out) > total:
        i = max((k for k in range(len(out)) if out[k] > 1), key=lambda k: out[k] - exact[k])
        out[i] -= 1
    while sum(out) < total:
        i = max(range(len(out)), key=lambda k: exact[k] - out[k])
        out[i] += 1
    return out


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


# Without a memory budget, a node holds the decode copy (linear_kernels) while
# it costs at most this much: a GPT-2-small node's copy is about 0.1 GiB, a
# quarter of gpt2-xl's 1.4 GiB, which would make each node's weights half the
# checkpoint's instead of a quarter (the point of splitting a model so large).
DECODE_COPY_AUTO_MAX_BYTES = 2**30


def wants_decode_copy(setting: str, helps: bool, geometry: Geometry, blocks: int, last: bool, budget: int | None) -> bool:
    """Whether a node holds its block matrices (and packed head) a second time,
    plain, for decode steps (`setting`: "auto", "true" or "false"; `helps`: the
    node's kernels and dtype gain from it, linear_kernels.decode_copy_helps). Under a memory budget,
    "auto" holds it where the node's need with the copy still fits the budget."""
    if setting not in ("auto", "true", "false"):
        raise ValueError(f"decode copy must be auto, true or false, not {setting!r}")
    if setting == "false" or not helps:
        return False
    if setting == "true":
        return True
    copy = geometry.decode_copy_bytes(blocks, last)
    if budget is not None:
        return geometry.need(blocks, last) + copy <= budget
    return copy <= DECODE_COPY_AUTO_MAX_BYTES
