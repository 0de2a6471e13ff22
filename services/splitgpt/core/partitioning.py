"""Which transformer blocks each partition serves: half-open [start, end) ranges."""

from __future__ import annotations

from collections.abc import Sequence

BlockRange = tuple[int, int]


class PartitionError(ValueError):
    pass


def even_split(n_layer: int, n_parts: int) -> list[BlockRange]:
    """Blocks shared out as evenly as possible; earlier parts take the remainder."""
    _check_counts(n_layer, n_parts)
    base, extra = divmod(n_layer, n_parts)
    ranges, start = [], 0
    for i in range(n_parts):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def block_parameters(hidden_size: int) -> int:
    """Parameters of one GPT-2 block: attention 4 d^2 + 4 d (qkv and proj with
    biases), MLP 8 d^2 + 5 d, two layer norms 4 d."""
    return 12 * hidden_size * hidden_size + 13 * hidden_size


def head_cost_in_blocks(vocab_size: int, hidden_size: int) -> float:
    """The embedding/lm_head matrix counted in blocks, by parameters.

    A block holds about 12*d^2 weights (qkv 3d^2, proj d^2, mlp 8d^2); the tied
    embedding holds vocab*d and lm_head multiplies by all of it every token.
    For gpt2 that is 5.45 blocks, so an even split leaves the last part the
    largest and slowest.
    """
    return vocab_size * hidden_size / block_parameters(hidden_size)


def balanced_split(n_layer: int, n_parts: int, last_part_extra: float) -> list[BlockRange]:
    """Contiguous ranges minimising the largest part cost (1 per block, plus
    `last_part_extra` on the last part, which holds the embedding and head)."""
    _check_counts(n_layer, n_parts)
    if n_parts == 1:
        return [(0, n_layer)]
    # Search the last part's size; the rest is an even split of what is left,
    # which is optimal for unit-cost blocks.
    best: tuple[float, int] | None = None
    for last in range(1, n_layer - (n_parts - 1) + 1):
        rest = n_layer - last
        worst = max(last + last_part_extra, -(-rest // (n_parts - 1)))
        if best is None or worst < best[0]:
            best = (worst, last)
    assert best is not None
    last = best[1]
    return even_split(n_layer - last, n_parts - 1) + [(n_layer - last, n_layer)]


def validate_ranges(ranges: Sequence[Sequence[int]], n_layer: int) -> list[BlockRange]:
    """Explicit ranges must tile [0, n_layer) in order, each non-empty."""
    if not ranges:
        raise PartitionError("at least one partition range is needed")
    out: list[BlockRange] = []
    expected_start = 0
    for i, r in enumerate(ranges):
        if len(r) != 2:
            raise PartitionError(f"range {i} must be [start, end], got {list(r)}")
        start, end = int(r[0]), int(r[1])
        if start != expected_start:
            raise PartitionError(f"range {i} starts at block {start}, expected {expected_start}")
        if end <= start:
            raise PartitionError(f"range {i} [{start}, {end}) is empty")
        out.append((start, end))
        expected_start = end
    if expected_start != n_layer:
        raise PartitionError(f"ranges end at block {expected_start}, the model has {n_layer}")
    return out


def resolve_split(
    spec: str | Sequence[Sequence[int]],
    n_layer: int,
    n_parts: int,
    vocab_size: int,
    hidden_size: int,
) -> list[BlockRange]:
    """`"even"`, `"balanced"`, or explicit ranges ([[start, end], ...] or "0-4,4-12")."""
    if isinstance(spec, str):
        spec = parse_split(spec)
    if isinstance(spec, str):
        if spec == "even":
            return even_split(n_layer, n_parts)
        if spec == "balanced":
            return balanced_split(n_layer, n_parts, head_cost_in_blocks(vocab_size, hidden_size))
        raise PartitionError(f"unknown split {spec!r}: use 'even', 'balanced' or explicit ranges")
    ranges = validate_ranges(spec, n_layer)
    if len(ranges) != n_parts:
        raise PartitionError(f"{len(ranges)} ranges given for {n_parts} partitions")
    return ranges


def _check_counts(n_layer: int, n_parts: int) -> None:
    if n_parts < 1:
        raise PartitionError("need at least one partition")
    if n_parts > n_layer:
        raise PartitionError(f"{n_parts} partitions for {n_layer} blocks: each needs at least one")


def parse_split(text: str) -> str | list[list[int]]:
    """`even`, `balanced`, or explicit ranges written `0-4,4-8,8-12`."""
    text = text.strip()
    if text in ("even", "balanced"):
        return text
    try:
        return [[int(a), int(b)] for a, b in (part.split("-") for part in text.split(","))]
    except ValueError:
        raise PartitionError(f"split {text!r}: use 'even', 'balanced' or ranges like '0-4,4-8,8-12'") from None
