from __future__ import annotations

import pytest
import torch

from splitgpt.core.kv_cache import CacheBudgetExceeded, CacheMiss, KVCacheStore


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
