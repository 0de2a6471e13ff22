"""The memory-aware split: blocks follow each node's room, and a plan that cannot
fit is refused naming the node, what it would need and its budget."""

from __future__ import annotations

import pytest

from splitgpt.core.memory_plan import (
    RUNTIME_BYTES,
    Geometry,
    MemoryPlanError,
    check_budget,
    memory_split,
    parse_budgets,
    parse_bytes,
    wants_decode_copy,
)
from splitgpt.core.tiny_model import GEOMETRIES, parameter_count

GiB = 2**30
XL = Geometry(n_layer=48, n_embd=1600, n_positions=1024, vocab_size=50257, dtype_bytes=4)


def test_sizes_parse_in_binary_units_as_kubernetes_and_docker_write_them():
    assert parse_bytes("4G") == parse_bytes("4Gi") == 4 * GiB
    assert parse_bytes("1.5G") == int(1.5 * GiB) and parse_bytes("512M") == 512 * 2**20
    assert parse_bytes("2147483648") == 2 * GiB  # the downward API's limits.memory
    assert parse_budgets("3G", 4) == [3 * GiB] * 4
    assert parse_budgets("4G,2G,2G,2G", 4) == [4 * GiB, 2 * GiB, 2 * GiB, 2 * GiB]
    for bad in ("lots", "4X", "-1G"):
        with pytest.raises(MemoryPlanError):
            parse_bytes(bad)
    with pytest.raises(MemoryPlanError, match="3 memory budgets given for 4 partitions"):
        parse_budgets("1G,2G,3G", 4)


def test_the_geometry_counts_what_the_checkpoint_holds():
    blocks_and_head = XL.n_layer * XL.block_bytes + XL.head_bytes - XL.vocab_size * XL.n_embd * 4  # the packed copy aside
    assert blocks_and_head == parameter_count(**GEOMETRIES["gpt2-xl"]) * 4


def test_blocks_follow_the_budgets_and_every_node_fits():
    budgets = [4 * GiB, 2 * GiB, 2 * GiB, 2 * GiB]
    ranges = memory_split(XL, budgets)
    sizes = [b - a for a, b in ranges]
    assert ranges[0][0] == 0 and ranges[-1][1] == 48 and all(ranges[i][1] == ranges[i + 1][0] for i in range(3))
    assert sizes[0] > 2 * sizes[1]  # twice the memory, more than twice the room for blocks
    assert sizes[3] < sizes[1]  # the last node also holds the head
    for i, (a, b) in enumerate(ranges):
        assert XL.need(b - a, i == 3) <= budgets[i]


def test_equal_budgets_give_a_balanced_split_and_bf16_needs_half():
    ranges = memory_split(XL, [3 * GiB] * 4)
    assert [b - a for a, b in ranges][:3] == [13, 13, 13]
    bf16 = Geometry(48, 1600, 1024, 50257, dtype_bytes=2)
    assert bf16.block_bytes * 2 == XL.block_bytes
    memory_split(bf16, [int(1.5 * GiB)] * 4)  # fits in bf16 ...
    with pytest.raises(MemoryPlanError):
        memory_split(XL, [int(1.5 * GiB)] * 4)  # ... not in float32


def test_a_plan_that_cannot_fit_is_refused_naming_the_node_its_need_and_budget():
    with pytest.raises(MemoryPlanError) as refused:
        memory_split(XL, [2 * GiB, 2 * GiB, 2 * GiB, 1 * GiB])
    text = str(refused.value)
    assert "does not fit" in text and "partition 3" in text and "against a budget of 1.00 GiB" in text
    with pytest.raises(MemoryPlanError, match="partition 1 would hold"):
        memory_split(XL, [8 * GiB, RUNTIME_BYTES, 8 * GiB, 8 * GiB])  # no room for even one block


def test_a_node_refuses_a_share_above_its_own_budget():
    check_budget(XL, 12, False, 3 * GiB, "part1-r0")
    with pytest.raises(MemoryPlanError, match=r"part3-r0 needs \d\.\d\d GiB for 12 blocks and the head .* budget of 2\.00 GiB"):
        check_budget(XL, 12, True, 2 * GiB, "part3-r0")


SMALL = Geometry(n_layer=12, n_embd=768, n_positions=1024, vocab_size=50257, dtype_bytes=4)


def test_the_decode_copy_is_held_where_it_fits():
    """auto: without a budget up to 1 GiB of copy (a GPT-2-small node's, not a
    quarter of gpt2-xl's); under a budget where need + copy still fit it."""
    assert SMALL.block_matrix_bytes == 12 * 768 * 768 * 4
    assert wants_decode_copy("auto", True, SMALL, 4, False, None)
    assert not wants_decode_copy("auto", True, XL, 12, False, None)  # 1.47 GB of copy
    need = XL.need(12, False)
    assert wants_decode_copy("auto", True, XL, 12, False, need + 12 * XL.block_matrix_bytes)
    assert not wants_decode_copy("auto", True, XL, 12, False, need + 12 * XL.block_matrix_bytes - 1)
    assert wants_decode_copy("true", True, XL, 12, False, None)  # asked for: held whatever it costs
    # The last node copies its packed head as well.
    assert SMALL.decode_copy_bytes(4, True) == 4 * SMALL.block_matrix_bytes + 50257 * 768 * 4
    last_need = SMALL.need(4, True)
    assert wants_decode_copy("auto", True, SMALL, 4, True, last_need + SMALL.decode_copy_bytes(4, True))
    assert not wants_decode_copy("auto", True, SMALL, 4, True, last_need + 4 * SMALL.block_matrix_bytes)
    assert not wants_decode_copy("false", True, SMALL, 1, False, None)
    assert not wants_decode_copy("true", False, SMALL, 1, False, None)  # bf16 or the reference kernels: no gain
    with pytest.raises(ValueError, match="auto, true or false"):
        wants_decode_copy("yes", True, SMALL, 1, False, None)
