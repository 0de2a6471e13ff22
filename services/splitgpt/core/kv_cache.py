"""Per-session K/V for the blocks one node serves, and the prompt blocks kept for reuse.

Bounded by a token budget (prompt blocks kept for prefix reuse go first, then
least recently used sessions), expired after a TTL, and released
explicitly when a request ends. A step past the position the node holds is a
`CacheMiss`: the coordinator rebuilds what the node lost (from the outputs the
node before it kept, core.engine) or replays the sequence from position 0. A
step before that position rewinds the session to it: after a failure part of
the chain may have committed a step the rest never saw, and the step is sent again.

A partition that is not the last also keeps the rows it sent on (its outputs)
for every position it holds: they are the next partition's inputs, from which a
replica that replaces it rebuilds its cache without recomputing anything here.

A session moves whole between replicas of one partition (live migration): the
store exports a copy of what it holds and another store imports it, after which
a step there continues exactly where the source would have.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .node_contract import CacheBudgetExceeded, CacheMiss, SessionSnapshot, StepInputError
from .prefix_cache import BLOCK_TOKENS


class PrefixBlock:
    """BLOCK_TOKENS positions of one session, kept for reuse: each local layer's
    K/V ([2, heads, BLOCK_TOKENS, head_dim]) and, where kept, the output rows.

    Kept without a copy: these are views of the buffers of the session that
    computed them. Copying a 400-token prompt's blocks cost 3-5 ms a node, on the
    path to the first token, or, done at the request's release, on the next
    request's (+3% time to first token at 0% hits, measured). A session only
    writes past what it holds, so the views stay valid when it grows its buffers
    (the old ones are no longer written) or ends; only a rewind over them makes
    it copy them out first (`own`). The price: a kept block holds its session's
    whole buffer alive until every block viewing it is evicted. When the session
    ends, blocks that view less than half of its buffer get their own copy
    (SessionKV.end): else one kept block of a long request (its prompt's last
    block, then hundreds of generated positions) pinned the whole buffer, 78 MB
    a gpt2-xl node for a 16-position block, and a shared-prefix benchmark's nodes
    grew from 2 to 6 GB each until the machine ran out of memory.
    """

    __slots__ = ("kv", "outputs", "kept")

    def __init__(self, kv: list[torch.Tensor], outputs: torch.Tensor | None) -> None:
        self.kv, self.outputs = kv, outputs
        self.kept = True  # False once the store evicted it: nothing to copy out then

    def own(self) -> None:
        self.kv = [t.clone() for t in self.kv]
        self.outputs = self.outputs.clone() if self.outputs is not None else None

    @property
    def nbytes(self) -> int:
        out = self.outputs.numel() * self.outputs.element_size() if self.outputs is not None else 0
        return sum(t.numel() * t.element_size() for t in self.kv) + out


class SessionKV:
    """K/V for one session: per local layer one [2, heads, capacity, head_dim]
    buffer, keys then values, each head's positions contiguous.

    Keys and values share a buffer so a step appends both with one copy (at
    decode every tensor op costs microseconds of dispatch, as much as its
    arithmetic); head-major rows keep long histories fast to read. Capacity
    grows by doubling so a decode step appends in place instead of
    re-concatenating the history.
    """

    def __init__(
        self, n_layers: int, n_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, output_width: int = 0
    ) -> None:
        self.length = 0
        self._heads, self._head_dim = n_heads, head_dim
        self._dtype, self._device = dtype, device
        self._kv: list[torch.Tensor | None] = [None] * n_layers
        self._output_width = output_width  # 0: outputs are not kept (the last partition)
        self._outputs: torch.Tensor | None = None  # [capacity, width]
        self._lent: list[PrefixBlock] = []  # kept blocks that are views of these buffers
        self._lent_end = 0  # the end of the last position they view
        self.last_used = 0.0

    def append(self, layer: int, kv: torch.Tensor) -> torch.Tensor:
        """Write kv ([2, heads, T, head_dim]: keys, values) after the committed
        length; return the whole history, [2, heads, length + T, head_dim]."""
        end = self.length + kv.shape[2]
        buf = self._kv[layer]
        if buf is None or buf.shape[2] < end:
            buf = self._kv[layer] = self._grown(buf, _capacity_for(end))
        buf[:, :, self.length : end] = kv
        return buf[:, :, :end]

    def keep_outputs(self, rows: torch.Tensor) -> None:
        """The step's output rows ([T, width]), kept after the committed length."""
        if not self._output_width:
            return
        end = self.length + rows.shape[0]
        if self._outputs is None or self._outputs.shape[0] < end:
            old = self._outputs
            self._outputs = torch.empty((_capacity_for(end), self._output_width), dtype=self._dtype, device=self._device)
            if old is not None and self.length:
                self._outputs[: self.length] = old[: self.length]
        self._outputs[self.length : end] = rows

    def outputs(self, start: int, end: int) -> torch.Tensor | None:
        """A copy of the kept output rows [start, end), or None if not all are held."""
        if self._outputs is None or not 0 <= start <= end <= self.length:
            return None
        return self._outputs[start:end].clone()

    def commit(self, n_tokens: int) -> None:
        self.length += n_tokens

    def rewind(self, length: int) -> None:
        """Forget the positions from `length` on (the next step overwrites them)."""
        if length < self._lent_end:
            self._copy_out_blocks()
        self.length = min(self.length, length)

    def block(self, index: int) -> PrefixBlock:
        """Positions [index * BLOCK_TOKENS, (index + 1) * BLOCK_TOKENS), as views (PrefixBlock says why)."""
        a, b = index * BLOCK_TOKENS, (index + 1) * BLOCK_TOKENS
        block = PrefixBlock([buf[:, :, a:b] for buf in self._kv], self._outputs[a:b] if self._outputs is not None else None)
        self._lent.append(block)
        self._lent_end = max(self._lent_end, b)
        return block

    def end(self) -> None:
        """The session is gone: kept blocks stay views of its buffers only while they
        hold at least half of them (PrefixBlock says why)."""
        kept = [b for b in self._lent if b.kept]
        capacity = next((buf.shape[2] for buf in self._kv if buf is not None), 0)
        if kept and len(kept) * BLOCK_TOKENS * 2 < capacity:
            for block in kept:
                block.own()
        self._lent.clear()
        self._lent_end = 0

    def _copy_out_blocks(self) -> None:
        """Copy the kept blocks that view these buffers out of them, before a rewind writes over them."""
        for block in self._lent:
            if block.kept:
                block.own()
        self._lent.clear()
        self._lent_end = 0

    def load(self, blocks: list[PrefixBlock]) -> None:
        """Start this (new) session from consecutive blocks: positions [0, len(blocks) * BLOCK_TOKENS)."""
        for layer in range(len(self._kv)):
            self.append(layer, torch.cat([b.kv[layer] for b in blocks], dim=2))
        if self._output_width and all(b.outputs is not None for b in blocks):
            self.keep_outputs(torch.cat([b.outputs for b in blocks]))
        self.commit(len(blocks) * BLOCK_TOKENS)

    def snapshot(self) -> SessionSnapshot:
        """Copies of the committed positions: a later step here appends past them or,
        after a rewind, overwrites them, and neither may reach an export in flight."""
        n = self.length
        outputs = self._outputs[:n].clone() if self._outputs is not None else None
        return SessionSnapshot(n, [buf[:, :, :n].clone() for buf in self._kv], outputs)

    def load_snapshot(self, snapshot: SessionSnapshot) -> None:
        """Start this (new) session from another store's export (checked by the store):
        exactly its positions, copied onto this session's device."""
        for layer, kv in enumerate(snapshot.kv):
            self.append(layer, kv)
        if snapshot.outputs is not None:
            self.keep_outputs(snapshot.outputs)
        self.commit(snapshot.length)

    @property
    def allocated_bytes(self) -> int:
        kv = sum(buf.numel() * buf.element_size() for buf in self._kv if buf is not None)
        return kv + (self._outputs.numel() * self._outputs.element_size() if self._outputs is not None else 0)

    def _grown(self, old: torch.Tensor | None, capacity: int) -> torch.Tensor:
        new = torch.empty((2, self._heads, capacity, self._head_dim), dtype=self._dtype, device=self._device)
        if old is not None and self.length:
            new[:, :, : self.length] = old[:, :, : self.length]
        return new


def _capacity_for(end: int) -> int:
    """Positions a session's buffer holds when it must reach `end`: doubling, so a
    decode step appends in place instead of re-concatenating the history."""
    return max(64, 1 << (end - 1).bit_length())


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
    prefix_blocks: int = 0  # prompt blocks kept for reuse
    prefix_bytes: int = 0  # their positions' bytes (the buffers they view may be larger: PrefixBlock)
    prefix_hits: int = 0  # sessions started from kept blocks
    prefix_reused_tokens: int = 0  # positions those sessions did not compute


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
        output_width: int = 0,
    ) -> None:
        self._dims = (n_layers, n_heads, head_dim)
        self._dtype, self._device = dtype, device
        self._output_width = output_width  # the hidden size where outputs are kept, else 0
        self.max_tokens = max_tokens
        self.ttl_s = ttl_s
        self._clock = clock
        self._sessions: OrderedDict[str, SessionKV] = OrderedDict()  # LRU order, oldest first
        self._prefix: OrderedDict[bytes, PrefixBlock] = OrderedDict()  # by chained hash, LRU order
        self.evictions = 0
        self.expirations = 0
        self.misses = 0
        self.prefix_hits = 0
        self.prefix_reused_tokens = 0

    @property
    def cached_tokens(self) -> int:
        return sum(s.length for s in self._sessions.values()) + len(self._prefix) * BLOCK_TOKENS

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def length(self, session_id: str) -> int | None:
        s = self._sessions.get(session_id)
        return None if s is None else s.length

    def prepare(self, steps: list[tuple[str, int, int]], reuse: dict[str, list[bytes]] | None = None) -> list[SessionKV]:
        """Check a whole batch of (session_id, position, n_tokens) before any is touched.

        Position 0 starts the session afresh (a new request or a replay); so does
        a sequence in `reuse`, from the kept blocks its hashes name, which must
        be exactly the positions before its step. Any other position must be
        one the node holds: the session is rewound to it. Nothing changes
        unless every sequence of the batch is valid.
        """
        self.expire()
        reuse = reuse or {}
        misses = {}
        for sid, position, _ in steps:
            if sid in reuse:
                if position != len(reuse[sid]) * BLOCK_TOKENS:
                    raise StepInputError(f"session {sid!r}: {len(reuse[sid])} reused blocks end before position {position}")
                lost = next((i for i, h in enumerate(reuse[sid]) if h not in self._prefix), None)
                if lost is not None:
                    misses[sid] = f"prefix block {lost} is no longer kept"
                continue
            if position == 0:
                continue
            held = self.length(sid)
            if held is None:
                misses[sid] = f"no cache held (asked for position {position})"
            elif held < position:
                misses[sid] = f"cache holds {held} positions, asked for position {position}"
        if misses:
            self.misses += 1
            raise CacheMiss(misses)
        needed = sum(n for _, _, n in steps)
        if needed > self.max_tokens:
            raise CacheBudgetExceeded(f"a step of {needed} tokens exceeds the KV budget of {self.max_tokens}")
        sessions = []
        for sid, position, _ in steps:
            if position == 0 or sid in reuse:
                self._discard(sid)
                self._sessions[sid] = SessionKV(*self._dims, self._dtype, self._device, self._output_width)
                if sid in reuse:
                    self._start_from_prefix(self._sessions[sid], reuse[sid])
            session = self._sessions[sid]
            session.rewind(position)
            self._sessions.move_to_end(sid)
            session.last_used = self._clock()
            sessions.append(session)
        self._evict_for(needed, protect={sid for sid, _, _ in steps})
        return sessions

    def _start_from_prefix(self, session: SessionKV, hashes: list[bytes]) -> None:
        blocks = []
        for h in hashes:
            self._prefix.move_to_end(h)
            blocks.append(self._prefix[h])
        session.load(blocks)
        self.prefix_hits += 1
        self.prefix_reused_tokens += session.length

    def keep_prefix(self, session: SessionKV, hashes: list[bytes]) -> int:
        """Keep each block of `session` that `hashes` names (block i is positions
        [16 i, 16 i + 16)) and that it holds whole, within the budget:
        older kept blocks make room, sessions never do. Returns the blocks added."""
        added, total = 0, self.cached_tokens
        whole = hashes[: session.length // BLOCK_TOKENS]
        for i, h in enumerate(whole):
            if h in self._prefix:
                self._prefix.move_to_end(h)
                continue
            while total + BLOCK_TOKENS > self.max_tokens and self._evict_block(keep=set(whole[:i])):
                total -= BLOCK_TOKENS
            if total + BLOCK_TOKENS > self.max_tokens:
                break  # no room but this chain's own earlier blocks: a later block is useless without them
            self._prefix[h] = session.block(i)
            total += BLOCK_TOKENS
            added += 1
        return added

    def _evict_block(self, keep: set[bytes]) -> bool:
        """Evict the least recently used kept block not in `keep`; False if none."""
        oldest = next((h for h in self._prefix if h not in keep), None)
        if oldest is None:
            return False
        self._evict_prefix(oldest)
        return True

    def outputs(self, session_id: str, start: int, end: int) -> torch.Tensor:
        """The output rows [start, end) the session kept; a CacheMiss if it does not hold them all."""
        s = self._sessions.get(session_id)
        rows = s.outputs(start, end) if s is not None else None
        if rows is None:
            self.misses += 1
            held = "no cache held" if s is None else f"holds {s.length} positions"
            raise CacheMiss({session_id: f"outputs [{start}, {end}) not kept ({held})"})
        return rows

    def export(self, session_id: str) -> SessionSnapshot:
        """A copy of everything the session holds (SessionKV.snapshot); a CacheMiss if none is held."""
        s = self._sessions.get(session_id)
        if s is None:
            self.misses += 1
            raise CacheMiss({session_id: "no cache held to export"})
        return s.snapshot()

    def import_session(self, session_id: str, snapshot: SessionSnapshot) -> int:
        """Start (or replace) the session from a replica's export; returns the positions it holds.

        All or nothing: a snapshot that does not fit this store is a StepInputError
        before anything changes. Otherwise it becomes the most recently used
        session, and others (kept prompt blocks first) make room for it, as in `prepare`.
        """
        self._check_snapshot(snapshot)
        self.expire()
        session = SessionKV(*self._dims, self._dtype, self._device, self._output_width)
        session.load_snapshot(snapshot)
        self._discard(session_id)
        self._sessions[session_id] = session  # a new key: at the LRU end
        session.last_used = self._clock()
        self._evict_for(0, protect={session_id})
        return session.length

    def _check_snapshot(self, snapshot: SessionSnapshot) -> None:
        """Everything an import's sender controls, against this store's partition,
        dtype and budget. The device is free: a snapshot off the wire is on the CPU,
        and the session copies it onto the store's."""
        n_layers, heads, head_dim = self._dims
        n = snapshot.length
        if not 1 <= n <= self.max_tokens:
            raise StepInputError(f"a session of {n} positions: at least 1, at most {self.max_tokens} (the KV budget)")
        if len(snapshot.kv) != n_layers:
            raise StepInputError(f"K/V for {len(snapshot.kv)} layers: this partition has {n_layers}")
        for layer, kv in enumerate(snapshot.kv):
            self._check_tensor(f"layer {layer}'s K/V", kv, (2, heads, n, head_dim))
        if (snapshot.outputs is not None) != bool(self._output_width):
            raise StepInputError(
                f"outputs [{n}, {self._output_width}] expected: this partition keeps them"
                if self._output_width
                else "outputs for a partition that keeps none (the last)"
            )
        if snapshot.outputs is not None:
            self._check_tensor("outputs", snapshot.outputs, (n, self._output_width))

    def _check_tensor(self, what: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
        if tuple(t.shape) != shape:
            raise StepInputError(f"{what} must be {list(shape)}, got {list(t.shape)}")
        if t.dtype != self._dtype:
            raise StepInputError(f"{what} must be {self._dtype} (this node's dtype), got {t.dtype}")

    def drop(self, session_ids: Iterable[str]) -> int:
        return sum(self._discard(sid) for sid in session_ids)

    def _discard(self, session_id: str) -> bool:
        # The blocks it lent keep viewing its buffers (nothing writes them any more), or get
        # their own copy when they are a small part of them (SessionKV.end).
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        session.end()
        return True

    def _evict_prefix(self, h: bytes) -> None:
        self._prefix.pop(h).kept = False

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
                sessions, prefix = list(self._sessions.values()), list(self._prefix.values())
                break
            except RuntimeError:  # mutated during the copy: try again
                continue
        else:
            sessions, prefix = [], []
        prefix_bytes = sum(b.nbytes for b in prefix)
        return KVStats(
            sessions=len(sessions),
            cached_tokens=sum(s.length for s in sessions) + len(prefix) * BLOCK_TOKENS,
            allocated_bytes=sum(s.allocated_bytes for s in sessions) + prefix_bytes,
            max_tokens=self.max_tokens,
            evictions=self.evictions,
            expirations=self.expirations,
            misses=self.misses,
            prefix_blocks=len(prefix),
            prefix_bytes=prefix_bytes,
            prefix_hits=self.prefix_hits,
            prefix_reused_tokens=self.prefix_reused_tokens,
        )

    def _evict_for(self, incoming: int, protect: set[str]) -> None:
        """Kept prompt blocks go first (losing one costs only a later prefill),
        then the least recently used sessions."""
        total = self.cached_tokens + incoming
        while self._prefix and total > self.max_tokens:
            self._evict_prefix(next(iter(self._prefix)))
            total -= BLOCK_TOKENS
        for sid in list(self._sessions):
            if total <= self.max_tokens:
                return
            if sid in protect:
                continue
            total -= self._sessions[sid].length
            self._discard(sid)
            self.evictions += 1
