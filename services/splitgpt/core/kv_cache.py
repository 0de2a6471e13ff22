"""Per-session K/V for the blocks one node serves.

Bounded by a token budget (least recently used sessions are evicted first),
expired after a TTL, and released explicitly when a request ends. A step at a
position the node does not hold is a `CacheMiss`: the coordinator answers it by
replaying the sequence's history from position 0, so eviction, restarts and
failover all take that one path.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

import torch


class CacheMiss(Exception):
    """The node does not hold the session at the position asked for."""

    def __init__(self, misses: dict[str, str]) -> None:
        self.misses = misses
        super().__init__("; ".join(f"{sid}: {why}" for sid, why in misses.items()))


class CacheBudgetExceeded(Exception):
    pass


class SessionKV:
    """K/V buffers for one session: [heads, capacity, head_dim] per local layer.

    Capacity grows by doubling so a decode step appends in place instead of
    re-concatenating the whole history.
    """

    def __init__(self, n_layers: int, n_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.length = 0
        self._shape = (n_heads, head_dim)
        self._dtype, self._device = dtype, device
        self._k: list[torch.Tensor | None] = [None] * n_layers
        self._v: list[torch.Tensor | None] = [None] * n_layers
        self.last_used = 0.0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v ([heads, T, head_dim]) after the committed length; return the whole history."""
        end = self.length + k.shape[1]
        kbuf, vbuf = self._k[layer], self._v[layer]
        if kbuf is None or kbuf.shape[1] < end:
            capacity = max(64, 1 << (end - 1).bit_length())
            kbuf, vbuf = self._grown(kbuf, capacity), self._grown(vbuf, capacity)
            self._k[layer], self._v[layer] = kbuf, vbuf
        kbuf[:, self.length : end] = k
        vbuf[:, self.length : end] = v
        return kbuf[:, :end], vbuf[:, :end]

    def commit(self, n_tokens: int) -> None:
        self.length += n_tokens

    def _grown(self, old: torch.Tensor | None, capacity: int) -> torch.Tensor:
        new = torch.empty((self._shape[0], capacity, self._shape[1]), dtype=self._dtype, device=self._device)
        if old is not None and self.length:
            new[:, : self.length] = old[:, : self.length]
        return new


class KVCacheStore:
    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        max_tokens: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dims = (n_layers, n_heads, head_dim)
        self._dtype, self._device = dtype, device
        self.max_tokens = max_tokens
        self.ttl_s = ttl_s
        self._clock = clock
        self._sessions: OrderedDict[str, SessionKV] = OrderedDict()  # LRU order, oldest first
        self.evictions = 0

    @property
    def cached_tokens(self) -> int:
        return sum(s.length for s in self._sessions.values())

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def length(self, session_id: str) -> int | None:
        s = self._sessions.get(session_id)
        return None if s is None else s.length

    def prepare(self, steps: list[tuple[str, int, int]]) -> list[SessionKV]:
        """Check a whole batch of (session_id, position, n_tokens) before any is touched.

        Position 0 starts the session afresh (a new request or a replay); any
        other position must equal what the node holds. Nothing changes unless
        every sequence of the batch is valid.
        """
        self.expire()
        misses = {}
        for sid, position, _ in steps:
            if position == 0:
                continue
            held = self.length(sid)
            if held is None:
                misses[sid] = f"no cache held (asked for position {position})"
            elif held != position:
                misses[sid] = f"cache holds {held} positions, asked for position {position}"
        if misses:
            raise CacheMiss(misses)
        needed = sum(n for _, _, n in steps)
        if needed > self.max_tokens:
            raise CacheBudgetExceeded(f"a step of {needed} tokens exceeds the KV budget of {self.max_tokens}")
        sessions = []
        for sid, position, _ in steps:
            if position == 0:
                self._sessions.pop(sid, None)
                self._sessions[sid] = SessionKV(*self._dims, self._dtype, self._device)
            self._sessions.move_to_end(sid)
            self._sessions[sid].last_used = self._clock()
            sessions.append(self._sessions[sid])
        self._evict_for(needed, protect={sid for sid, _, _ in steps})
        return sessions

    def drop(self, session_ids: Iterable[str]) -> int:
        return sum(self._sessions.pop(sid, None) is not None for sid in session_ids)

    def expire(self) -> int:
        cutoff = self._clock() - self.ttl_s
        stale = [sid for sid, s in self._sessions.items() if s.last_used < cutoff]
        return self.drop(stale)

    def _evict_for(self, incoming: int, protect: set[str]) -> None:
        total = self.cached_tokens + incoming
        for sid in list(self._sessions):
            if total <= self.max_tokens:
                return
            if sid in protect:
                continue
            total -= self._sessions.pop(sid).length
            self.evictions += 1
