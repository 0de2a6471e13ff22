"""Prefix hashes and the coordinator's record of what nodes kept."""

from __future__ import annotations

from splitgpt.core.prefix_cache import BLOCK_TOKENS, PrefixIndex, block_hashes, reusable_blocks


def test_a_block_hash_names_its_whole_prefix():
    a = list(range(40))
    b = [999] + a[1:]  # differs in the first block only
    ha, hb = block_hashes(a), block_hashes(b)
    assert len(ha) == 40 // BLOCK_TOKENS
    assert ha == block_hashes(a[:32] + [5, 6])  # the same full blocks, whatever follows
    assert all(x != y for x, y in zip(ha, hb, strict=True))  # equal second blocks, different prefixes


def test_at_least_one_prompt_token_is_always_computed():
    assert reusable_blocks(32) == 1 and reusable_blocks(33) == 2 and reusable_blocks(1) == 0


def test_the_index_reuses_only_what_every_node_of_the_chain_kept():
    index = PrefixIndex()
    hashes = block_hashes(list(range(64)))
    index.stored("n0", hashes)
    index.stored("n1", hashes[:2])
    assert index.common_prefix(["n0", "n1"], hashes) == 2
    assert index.common_prefix(["n0", "n2"], hashes) == 0
    index.forget("n0")
    assert index.common_prefix(["n0"], hashes) == 0


def test_the_index_is_bounded_per_node_least_recently_used_first():
    index = PrefixIndex(max_blocks=2)
    a, b, c = block_hashes(list(range(48)))
    index.stored("n", [a, b])
    assert index.common_prefix(["n"], [a]) == 1  # a is now the most recent
    index.stored("n", [c])
    assert index.common_prefix(["n"], [a]) == 1 and index.common_prefix(["n"], [b]) == 0
