"""What a partition node does, without the transport: embed, step, release, and a
session's export to (and import from) a replica of its partition.

The servicer turns protobuf into these calls; everything here is synchronous
torch work that the shell runs on its own worker thread, never on the event loop.
What a step carries and the errors it raises are `core.node_contract`'s.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import threading
import time
from dataclasses import dataclass

import torch

from .engine_observer import NO_NODE_OBSERVER, NodeStepObserver
from .gpt2_partition import GPT2Partition
from .kv_cache import KVCacheStore
from .node_contract import SequenceStep, SessionSnapshot, StepBatch, StepInputError, StepResult, WrongPartition
from .prefix_cache import BLOCK_TOKENS, HASH_BYTES
from .sampling import sample_with_alternatives


@dataclass(frozen=True)
class ThreadBudget:
    """Intra-op threads for each step.

    Nodes on one host share its cores: with k micro-batches in flight, up to
    k nodes compute at once, so each takes max_threads / k. A lone stream gets
    every core (one 2-thread GEMV is ~1.6x faster than one thread at batch 1);
    two micro-batches get one core each instead of fighting over both, which
    stalls both: a parallel region waits for its slowest, preempted thread.
    """

    max_threads: int
    divide_among_steps: bool = False

    def for_step(self, concurrent_steps: int) -> int:
        if not self.divide_among_steps or concurrent_steps <= 1:
            return self.max_threads
        return max(1, self.max_threads // concurrent_steps)


class NodeEngine:
    def __init__(
        self, partition: GPT2Partition, kv_max_tokens: int, kv_ttl_s: float, threads: ThreadBudget | None = None
    ) -> None:
        self.partition = partition
        # Read once: a transformers config's attribute access is slow enough to show in a tiny step.
        self.n_ctx, self.vocab_size = partition.config.n_positions, partition.config.vocab_size
        self.threads = threads or ThreadBudget(torch.get_num_threads())
        self.observer: NodeStepObserver = NO_NODE_OBSERVER  # a shell sets its own once serving
        self.cache = KVCacheStore(
            n_layers=partition.n_local_layers,
            n_heads=partition.n_heads,
            head_dim=partition.head_dim,
            dtype=partition.dtype,
            device=partition.device,
            max_tokens=kv_max_tokens,
            ttl_s=kv_ttl_s,
            # Every partition but the last keeps its outputs: the next one's inputs,
            # to rebuild a replica of it that lost its cache (core.kv_cache).
            output_width=0 if partition.holds_head else partition.hidden_size,
        )

    @property
    def is_last(self) -> bool:
        return self.partition.holds_head

    def embed(self, items: list[tuple[list[int], int]]) -> list[torch.Tensor]:
        if not self.is_last:
            raise WrongPartition("this partition does not hold the embedding: the last one does")
        vocab, n_ctx = self.partition.config.vocab_size, self.partition.config.n_positions
        # Each item is at most n_ctx tokens (checked below); all together at most
        # what one step may hold in the KV cache, which is what they are embedded for.
        if sum(len(ids) for ids, _ in items) > self.cache.max_tokens:
            raise StepInputError(f"embed of more than {self.cache.max_tokens} tokens (the KV budget) in one call")
        for token_ids, position in items:
            if position < 0:
                raise StepInputError(f"position {position} is negative")
            if not token_ids:
                raise StepInputError("embed needs at least one token id")
            bad = [t for t in token_ids if not 0 <= t < vocab]
            if bad:
                raise StepInputError(f"token ids {bad[:5]} outside the vocabulary [0, {vocab})")
            if position + len(token_ids) > n_ctx:
                raise StepInputError(f"positions up to {position + len(token_ids)} exceed the context of {n_ctx}")
        return [self.partition.embed(ids, pos) for ids, pos in items]

    def step(self, batch: StepBatch) -> StepResult:
        """One step for a batch; all-or-nothing on the caches of its sessions."""
        if not batch.sequences:
            return StepResult(hidden=batch.hidden[:0])
        started = time.perf_counter()
        decode_rows = self._validate(batch)
        self._set_threads(batch.concurrent_steps)
        reuse = {s.session_id: list(s.block_hashes[: s.reuse_blocks]) for s in batch.sequences if s.reuse_blocks}
        sessions = self.cache.prepare([(s.session_id, s.position, s.length) for s in batch.sequences], reuse)
        try:
            out = self.partition.forward(batch.hidden, batch.lengths, sessions)
        except BaseException:
            # Partly written caches must not be trusted: the coordinator replays them.
            self.cache.drop(s.session_id for s in batch.sequences)
            raise
        offset = 0
        for session, s in zip(sessions, batch.sequences, strict=True):
            session.keep_outputs(out[offset : offset + s.length])
            offset += s.length
            session.commit(s.length)
            if s.block_hashes:
                self.cache.keep_prefix(session, list(s.block_hashes))
        result = self._sample(batch, out) if self.is_last else StepResult(hidden=out)
        seconds = time.perf_counter() - started
        self.observer.step(batch.hidden.shape[0] - decode_rows, decode_rows, len(batch.sequences), seconds)
        return result

    def _sample(self, batch: StepBatch, out: torch.Tensor) -> StepResult:
        ends = torch.tensor(batch.lengths, device=out.device).cumsum(0) - 1
        logits = self.partition.logits(out[ends])
        next_positions = [s.position + s.length for s in batch.sequences]
        tokens, logprobs, top = sample_with_alternatives(logits, [s.sampling for s in batch.sequences], next_positions)
        # The embedding of each token just chosen is its sequence's next input;
        # past the end of the context there is no next step (zeros stand in).
        n_ctx = self.n_ctx
        next_input = self.partition.embed_at(tokens, [min(p, n_ctx - 1) for p in next_positions])
        past_end = torch.tensor([p >= n_ctx for p in next_positions], device=next_input.device)
        next_input = next_input.masked_fill(past_end.unsqueeze(1), 0.0)
        return StepResult(token_ids=tokens, logprobs=logprobs, top_logprobs=top, next_input=next_input)

    def inline_worthy(self, rows: int, max_row_parameters: int) -> bool:
        """Whether a step of `rows` rows is cheaper run on the caller's thread than
        handed to a worker: single-threaded (small blocks) and small (the shell's rule)."""
        return not self.partition.blocks_parallel and rows * self.partition.parameter_count <= max_row_parameters

    def _set_threads(self, concurrent_steps: int) -> None:
        """This step's threads: the budget's share when the partition's blocks are
        large, else one (linear_kernels.PARALLEL_MIN_WEIGHT_BYTES says why)."""
        n = self.threads.for_step(concurrent_steps) if self.partition.blocks_parallel else 1
        # An OpenMP thread count belongs to the calling thread (a node's steps run on
        # its main thread, small ones on its event loop's), and a process must set it once even to
        # the count torch reports: until set, oneDNN ran a [1, 768] x [768, 3072]
        # product 20x slower here than after setting the very same 2.
        if getattr(_thread_state, "threads", None) != n or torch.get_num_threads() != n:
            torch.set_num_threads(n)
            _thread_state.threads = n

    def _validate(self, batch: StepBatch) -> int:
        """Everything a step's sender controls, checked before any allocation: a
        malformed or hostile step is a StepInputError (INVALID_ARGUMENT), never a crash.
        Returns the decode rows (one token after position 0), counted here to save a pass."""
        decode_rows = 0
        d, n_ctx = self.partition.hidden_size, self.n_ctx
        if len(batch.sequences) > self.cache.max_tokens:  # each needs at least one KV position
            raise StepInputError(f"{len(batch.sequences)} sequences in one step: at most {self.cache.max_tokens} (the KV budget)")
        rows = sum(batch.lengths)
        if batch.hidden.dim() != 2 or batch.hidden.shape[1] != d or batch.hidden.shape[0] != rows:
            raise StepInputError(
                f"hidden must be [{rows}, {d}] (the sum of the sequence lengths), got {list(batch.hidden.shape)}"
            )
        if batch.hidden.dtype != self.partition.dtype:
            raise StepInputError(f"hidden must be {self.partition.dtype} (this node's dtype), got {batch.hidden.dtype}")
        vocab = self.vocab_size
        seen = set()
        for s in batch.sequences:
            _check_session_id(s.session_id)
            if s.session_id in seen:
                raise StepInputError(f"session {s.session_id!r} appears twice in one step")
            seen.add(s.session_id)
            if s.length < 1:
                raise StepInputError(f"session {s.session_id!r}: length must be at least 1")
            if s.position < 0 or s.position + s.length > n_ctx:
                raise StepInputError(f"session {s.session_id!r}: positions outside the context [0, {n_ctx})")
            if self.is_last:
                _check_sampling(s, vocab)
            _check_prefix(s, n_ctx)
            decode_rows += s.length == 1 and s.position > 0
        return decode_rows

    def warm_up(self) -> None:
        """One throwaway step: touches every weight page (safetensors maps them
        lazily) and the allocator, so the first request is not the slow one."""
        p = self.partition
        hidden = p.embed([0], 0) if self.is_last else torch.zeros(1, p.hidden_size, dtype=p.dtype, device=p.device)
        self.step(StepBatch([SequenceStep("__warm_up__", 0, 1)], hidden))
        self.release(["__warm_up__"])

    def release(self, session_ids: list[str]) -> int:
        return self.cache.drop(session_ids)

    def outputs(self, session_id: str, start: int, end: int) -> torch.Tensor:
        if self.is_last:
            raise WrongPartition("the last partition keeps no outputs: nothing comes after it")
        if not 0 <= start <= end <= self.n_ctx:
            raise StepInputError(f"outputs [{start}, {end}) outside the context [0, {self.n_ctx}]")
        return self.cache.outputs(session_id, start, end)

    def export_session(self, session_id: str) -> SessionSnapshot:
        """Live migration: a copy of the session's committed state here; CacheMiss if none is held."""
        _check_session_id(session_id)
        return self.cache.export(session_id)

    def import_session(self, session_id: str, snapshot: SessionSnapshot) -> int:
        """Start (or replace) the session from a replica's export: the next step, at
        position `snapshot.length`, computes what it would have there. Returns the positions held."""
        _check_session_id(session_id)
        if snapshot.length > self.n_ctx:
            raise StepInputError(f"a session of {snapshot.length} positions: the context holds {self.n_ctx}")
        return self.cache.import_session(session_id, snapshot)


MAX_SESSION_ID_CHARS = 512
_thread_state = threading.local()  # the thread count each thread last set (_set_threads)


def _check_session_id(session_id: str) -> None:
    if len(session_id) > MAX_SESSION_ID_CHARS:
        raise StepInputError(f"session id of {len(session_id)} characters: at most {MAX_SESSION_ID_CHARS}")


def _check_prefix(s: SequenceStep, n_ctx: int) -> None:
    """Prefix hashes a node would store or look up: bounded, well-formed, consistent."""
    if len(s.block_hashes) > n_ctx // BLOCK_TOKENS or any(len(h) != HASH_BYTES for h in s.block_hashes):
        raise StepInputError(f"session {s.session_id!r}: at most {n_ctx // BLOCK_TOKENS} block hashes of {HASH_BYTES} bytes each")
    if s.reuse_blocks and (s.reuse_blocks > len(s.block_hashes) or s.position != s.reuse_blocks * BLOCK_TOKENS):
        raise StepInputError(
            f"session {s.session_id!r}: reuse_blocks {s.reuse_blocks} needs as many block hashes "
            f"and position {s.reuse_blocks * BLOCK_TOKENS}"
        )


def _check_sampling(s: SequenceStep, vocab: int) -> None:
    """Sampling parameters that would make the last partition's sampler fail."""
    p = s.sampling
    if not math.isfinite(p.temperature) or p.temperature < 0:
        raise StepInputError(f"session {s.session_id!r}: temperature must be finite and at least 0")
    if not math.isfinite(p.top_p) or not 0 < p.top_p <= 1:
        raise StepInputError(f"session {s.session_id!r}: top_p must be in (0, 1]")
    if p.top_k < 0:
        raise StepInputError(f"session {s.session_id!r}: top_k must be at least 0")
    if len(p.suppress) >= vocab or any(not 0 <= t < vocab for t in p.suppress):
        raise StepInputError(f"session {s.session_id!r}: suppressed token ids must be fewer than {vocab}, each in [0, {vocab})")
    if not 0 <= getattr(p, "top_logprobs", 0) <= vocab:
        raise StepInputError(f"session {s.session_id!r}: top_logprobs must be in [0, {vocab}]")


def return_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim).

    Loading packs every weight into a new buffer; the temporaries it freed stay
    in malloc's arenas, resident: 0.23 GB of a gpt2-xl node's 2.1 GB, measured
    here. Elsewhere than glibc there is nothing to call and nothing is done."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_seconds() -> float:
    """CPU time this process has used so far, user and system, all its threads."""
    times = os.times()
    return times.user + times.system


def resident_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best there is (KiB on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
