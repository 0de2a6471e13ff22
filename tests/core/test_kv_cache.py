from __future__ import annotations

import pytest
import torch

from splitgpt.core.kv_cache import CacheBudgetExceeded, CacheMiss, KVCacheStore
from splitgpt.core.node_contract import StepInputError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def store(max_tokens=100, ttl_s=60.0, clock=None) -> KVCacheStore:
    return KVCacheStore(2, 2, 4, torch.float32, torch.device("cpu"), max_tokens, ttl_s, clock or Clock())


def fill(s: KVCacheStore, sid: str, position: int, n: int) -> None:
    (session,) = s.prepare([(sid, position, n)])
    for layer in range(2):
        session.append(layer, torch.randn(2, 2, n, 4))
    session.commit(n)


def test_append_returns_whole_history_and_grows():
    s = store(max_tokens=1000)
    (session,) = s.prepare([("a", 0, 3)])
    kv0 = torch.randn(2, 2, 3, 4)  # keys and values, heads, positions, head_dim
    session.append(0, kv0)
    session.commit(3)
    for i in range(100):  # past the first capacity of 64
        (session,) = s.prepare([("a", 3 + i, 1)])
        kv = session.append(0, torch.stack([torch.full((2, 1, 4), float(i)), torch.zeros(2, 1, 4)]))
        session.commit(1)
    assert kv.shape == (2, 2, 103, 4)
    torch.testing.assert_close(kv[:, :, :3], kv0)
    assert float(kv[0, 0, -1, 0]) == 99.0 and float(kv[1, 0, -1, 0]) == 0.0


def test_wrong_position_or_unknown_session_is_a_miss_and_changes_nothing():
    s = store()
    fill(s, "a", 0, 5)
    with pytest.raises(CacheMiss) as err:
        s.prepare([("a", 5, 1), ("b", 3, 1), ("a2", 0, 1)])
    assert "b" in err.value.misses and "a" not in err.value.misses
    assert "a2" not in s  # the valid part of a refused batch was not started
    with pytest.raises(CacheMiss, match="holds 5"):
        s.prepare([("a", 7, 1)])


def test_a_step_behind_the_held_position_rewinds_to_it():
    """After a failure part of a chain may hold a step the rest never saw: sent
    again, it overwrites those positions."""
    s = store()
    fill(s, "a", 0, 5)
    (session,) = s.prepare([("a", 3, 1)])
    assert session.length == 3
    session.append(0, torch.full((2, 2, 1, 4), 7.0))
    session.commit(1)
    assert s.length("a") == 4


def test_position_zero_restarts_a_session():
    s = store()
    fill(s, "a", 0, 5)
    fill(s, "a", 0, 2)
    assert s.length("a") == 2


def test_budget_evicts_least_recently_used_first():
    s = store(max_tokens=10)
    fill(s, "old", 0, 4)
    fill(s, "mid", 0, 4)
    fill(s, "old", 4, 1)  # touched: now the most recent
    fill(s, "new", 0, 4)
    assert "mid" not in s and "old" in s and "new" in s
    assert s.cached_tokens <= 10 and s.evictions == 1


def test_a_step_larger_than_the_budget_is_refused():
    with pytest.raises(CacheBudgetExceeded):
        store(max_tokens=4).prepare([("a", 0, 5)])


def test_ttl_expires_idle_sessions():
    clock = Clock()
    s = store(ttl_s=10, clock=clock)
    fill(s, "a", 0, 2)
    clock.now = 5
    fill(s, "b", 0, 2)
    clock.now = 12
    assert s.expire() == 1 and "a" not in s and "b" in s


def test_release():
    s = store()
    fill(s, "a", 0, 2)
    assert s.drop(["a", "zzz"]) == 1 and len(s) == 0


def kept(max_tokens=1000, width=3) -> KVCacheStore:
    """A store that keeps outputs `width` wide (a partition that is not the last)."""
    return KVCacheStore(2, 2, 4, torch.float32, torch.device("cpu"), max_tokens, 60.0, Clock(), output_width=width)


def step(s: KVCacheStore, sid: str, position: int, n: int, reuse=None, value: float | None = None):
    (session,) = s.prepare([(sid, position, n)], reuse)
    kv = torch.randn(2, 2, n, 4) if value is None else torch.full((2, 2, n, 4), value)
    for layer in range(2):
        session.append(layer, kv)
    session.keep_outputs(torch.arange(position, position + n, dtype=torch.float32)[:, None].expand(n, 3))
    session.commit(n)
    return session


def test_outputs_are_kept_for_every_held_position_and_refused_beyond():
    s = kept()
    step(s, "a", 0, 70)  # past the first capacity: the outputs buffer grows too
    step(s, "a", 70, 1)
    assert s.outputs("a", 0, 71)[:, 0].tolist() == list(range(71))
    with pytest.raises(CacheMiss, match="not kept"):
        s.outputs("a", 0, 72)
    with pytest.raises(CacheMiss, match="no cache held"):
        s.outputs("b", 0, 1)


def test_kept_prompt_blocks_start_a_new_session_with_their_kv_and_outputs():
    s = kept()
    hashes = [bytes([i]) * 16 for i in range(3)]
    first = step(s, "a", 0, 40)  # two whole blocks of 16, and 8 positions
    assert s.keep_prefix(first, hashes) == 2  # the third block is not whole
    assert s.stats().prefix_blocks == 2 and s.cached_tokens == 40 + 32
    second = step(s, "b", 32, 4, reuse={"b": hashes[:2]})
    assert second.length == 36
    keys, _ = second.append(0, torch.zeros(2, 2, 0, 4))
    first_keys, _ = first.append(0, torch.zeros(2, 2, 0, 4))
    assert torch.equal(keys[:, :32], first_keys[:, :32])
    assert s.outputs("b", 0, 36)[:, 0].tolist() == list(range(36))
    stats = s.stats()
    assert stats.prefix_hits == 1 and stats.prefix_reused_tokens == 32


def test_a_block_no_longer_kept_is_a_miss_and_a_reuse_must_end_at_the_step():
    s = kept()
    hashes = [bytes([i]) * 16 for i in range(2)]
    with pytest.raises(CacheMiss, match="prefix block 0"):
        s.prepare([("b", 32, 1)], {"b": hashes})
    with pytest.raises(StepInputError):
        s.prepare([("b", 16, 1)], {"b": hashes})


def test_kept_blocks_are_evicted_before_any_session_and_never_evict_one():
    s = kept(max_tokens=64)
    a = step(s, "a", 0, 48)
    assert s.keep_prefix(a, [bytes([i]) * 16 for i in range(3)]) == 1  # room for one block: sessions stay
    step(s, "b", 0, 16)  # needs the room the block took
    assert s.stats().prefix_blocks == 0 and "a" in s and "b" in s


def test_kept_blocks_outlive_their_session_and_what_it_overwrites():
    """Blocks are kept as views of the session's buffers: a rewind over them copies
    them out first; a buffer that grows, or the session's release, leaves them valid."""
    s = kept()
    hashes = [bytes([i]) * 16 for i in range(2)]
    a = step(s, "a", 0, 32, value=1.0)
    s.keep_prefix(a, hashes)
    step(s, "a", 16, 8, value=2.0)  # rewound over the second block, which keeps its 1.0s
    step(s, "a", 24, 100, value=3.0)  # the buffers double
    s.drop(["a"])
    b = step(s, "b", 32, 1, reuse={"b": hashes})
    keys, _ = b.append(0, torch.zeros(2, 2, 0, 4))
    assert torch.all(keys[:, :32] == 1.0)


def test_a_few_kept_blocks_of_an_ended_long_session_do_not_pin_its_whole_buffer():
    """A request that reused a shared prefix keeps one block of its own (the prompt's last), in a
    buffer sized for the whole prompt and its generation: once the session ends the block has
    its own 16 positions, not a view of that 256-position buffer. Blocks that are most of a
    buffer stay views (a copy of them would cost the release its time)."""
    s = kept()
    a = step(s, "a", 0, 200, value=1.0)
    s.keep_prefix(a, [b"\x01" * 16])  # only its first block is named (as if the rest were shared)
    (block,) = s._prefix.values()
    assert block.kv[0].untyped_storage().nbytes() >= 256 * 2 * 2 * 4 * 4  # still the session's buffer
    s.drop(["a"])
    assert block.kv[0].untyped_storage().nbytes() == 16 * 2 * 2 * 4 * 4  # its own positions only
    b = step(s, "b", 16, 1, reuse={"b": [b"\x01" * 16]})
    keys, _ = b.append(0, torch.zeros(2, 2, 0, 4))
    assert torch.all(keys[:, :16] == 1.0)

    c = step(s, "c", 0, 64, value=3.0)  # four whole blocks, kept: all of its 64-position buffer
    s.keep_prefix(c, [bytes([i + 10]) * 16 for i in range(4)])
    s.drop(["c"])
    assert s._prefix[bytes([10]) * 16].kv[0].untyped_storage().nbytes() == 64 * 2 * 2 * 4 * 4  # views, no copy
