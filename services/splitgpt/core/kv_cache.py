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
from dataclasses import dataclass

import torch

from .node_contract import CacheBudgetExceeded, CacheMiss


class SessionKV:
    """K/V for one session: per local layer one [2, heads, capacity, head_dim]
    buffer, keys then values, each head's positions contiguous.

    Keys and values share a buffer so a step appends both with one copy (at
    decode every tensor op costs microseconds of dispatch, as much as its
    arithmetic); head-major rows keep long histories fast to read. Capacity
    grows by doubling so a decode step appends in place instead of
    re-concatenating the history.
    """

    def __init__(self, n_layers: int, n_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.length = 0
        self._heads, self._head_dim = n_heads, head_dim
        self._dtype, self._device = dtype, device
        self._kv: list[torch.Tensor | None] = [None] * n_layers
        self.last_used = 0.0

    def append(self, layer: int, kv: torch.Tensor) -> torch.Tensor:
        """Write kv ([2, heads, T, head_dim]: keys, values) after the committed
        length; return the whole history, [2, heads, length + T, head_dim]."""
        end = self.length + kv.shape[2]
        buf = self._kv[layer]
        if buf is None or buf.shape[2] < end:
            buf = self._kv[layer] = self._grown(buf, max(64, 1 << (end - 1).bit_length()))
        buf[:, :, self.length : end] = kv
        return buf[:, :, :end]

    def commit(self, n_tokens: int) -> None:
        self.length += n_tokens

    @property
    def allocated_bytes(self) -> int:
        return sum(buf.numel() * buf.element_size() for buf in self._kv if buf is not None)

    def _grown(self, old: torch.Tensor | None, capacity: int) -> torch.Tensor:
        new = torch.empty((2, self._heads, capacity, self._head_dim), dtype=self._dtype, device=self._device)
        if old is not None and self.length:
            new[:, :, : self.length] = old[:, :, : self.length]
        return new


@dataclass(frozen=True)
class KVStats:
    """A snapshot of a store, for metrics: read from another thread than the one that steps."""

    sessions: int
    cached_tokens: int
    allocated_bytes: int
    max_tokens: int
    evictions: int  # sessions evicted for the budget
    expirations: int  # sessions expired by the TTL
    misses: int  # steps refused with CacheMiss


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
        self.expirations = 0
        self.misses = 0

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
            self.misses += 1
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
        expired = self.drop(stale)
        self.expirations += expired
        return expired

    def stats(self) -> KVStats:
        """Safe to call from any thread while another steps: it reads a copy of the
        session list (one C-level copy under the GIL), never iterates the live one."""
        for _ in range(10):
            try:
                sessions = list(self._sessions.values())
                break
            except RuntimeError:  # mutated during the copy: try again
                continue
        else:
            sessions = []
        return KVStats(
            sessions=len(sessions),
            cached_tokens=sum(s.length for s in sessions),
            allocated_bytes=sum(s.allocated_bytes for s in sessions),
            max_tokens=self.max_tokens,
            evictions=self.evictions,
            expirations=self.expirations,
            misses=self.misses,
        )

    def _evict_for(self, incoming: int, protect: set[str]) -> None:
        total = self.cached_tokens + incoming
        for sid in list(self._sessions):
            if total <= self.max_tokens:
                return
            if sid in protect:
                continue
            total -= self._sessions.pop(sid).length
            self.evictions += 1
