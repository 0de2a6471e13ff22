from __future__ import annotations

import pytest

from splitgpt.core.partitioning import (
    PartitionError,
    balanced_split,
    even_split,
    head_cost_in_blocks,
    parse_split,
    resolve_split,
    validate_ranges,
)


def test_even_split_spreads_the_remainder():
    assert even_split(12, 3) == [(0, 4), (4, 8), (8, 12)]
    assert even_split(4, 3) == [(0, 2), (2, 3), (3, 4)]
    assert even_split(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_balanced_split_counts_the_head_on_the_last_part():
    cost = head_cost_in_blocks(50257, 768)
    assert 5.4 < cost < 5.5  # gpt2: lm_head is worth about five blocks
    ranges = balanced_split(12, 3, cost)
    assert ranges == [(0, 6), (6, 11), (11, 12)]


def test_explicit_ranges_must_tile_the_model():
    assert validate_ranges([[0, 5], [5, 12]], 12) == [(0, 5), (5, 12)]
    for bad in ([[0, 5], [6, 12]], [[0, 5], [5, 11]], [[0, 0], [0, 12]], [[1, 12]]):
        with pytest.raises(PartitionError):
            validate_ranges(bad, 12)


def test_more_partitions_than_blocks_is_refused():
    with pytest.raises(PartitionError, match="at least one"):
        even_split(2, 3)


def test_parse_and_resolve():
    assert parse_split("even") == "even"
    assert parse_split("0-4,4-12") == [[0, 4], [4, 12]]
    assert resolve_split("0-4,4-12", 12, 2, 50257, 768) == [(0, 4), (4, 12)]
    with pytest.raises(PartitionError):
        parse_split("zero-four")
    with pytest.raises(PartitionError):
        resolve_split("0-4,4-12", 12, 3, 50257, 768)
