"""What travels between the coordinator and a partition node, and how it fails.

Both sides build on this file and nothing else of the other's: the node engine
(`core.node_engine`) takes a `StepBatch` and returns a `StepResult`, raising
the errors below; the coordinator's engine (`core.engine`) sends batches
through a `NodeClient` and handles the same errors, whether the client calls a
node engine in-process or over gRPC (`shells.node_client`, which maps status
codes back to these types). No torch at import and no model code: the
coordinator process loads neither transformers nor the checkpoint readers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .generation_types import SamplingSpec

if TYPE_CHECKING:  # annotations only: the contract itself needs no tensor library
    import torch


@dataclass(frozen=True)
class SequenceStep:
    session_id: str
    position: int  # of the sequence's first new row; 0 starts its session afresh
    length: int  # rows of the packed hidden states that are this sequence's
    sampling: SamplingSpec = SamplingSpec()
    # Prefix reuse (core.prefix_cache): the chained hashes of the prompt's full
    # blocks, sent with its prefill steps; the node keeps each block it then holds
    # whole. The first `reuse_blocks` of them start the session instead of
    # position 0: the step's rows begin right after them.
    block_hashes: tuple[bytes, ...] = ()
    reuse_blocks: int = 0


@dataclass(frozen=True)
class StepBatch:
    sequences: list[SequenceStep]
    hidden: torch.Tensor  # [sum of lengths, d], packed in the order of `sequences`
    concurrent_steps: int = 1  # micro-batches in flight in the pipeline, this one included

    @property
    def lengths(self) -> list[int]:
        return [s.length for s in self.sequences]


@dataclass(frozen=True)
class StepResult:
    hidden: torch.Tensor | None = None  # not last: output rows, packed as the input
    token_ids: list[int] = field(default_factory=list)  # last: one per sequence ...
    logprobs: list[float] = field(default_factory=list)
    # last: each sequence's most likely (token id, log-probability) pairs, when its sampling asked for them
    top_logprobs: list[tuple[tuple[int, float], ...]] = field(default_factory=list)
    next_input: torch.Tensor | None = None  # ... and its embedding at the next position: [sequences, d]
    partition_ms: list[float] = field(default_factory=list)  # a relayed step: each partition's compute, in order


@dataclass(frozen=True)
class SessionSnapshot:
    """One session's whole state on one node, for a replica of the same partition
    to import (live migration): its committed positions only, as copies, so the
    source may go on stepping (or rewinding) the session while they travel."""

    length: int  # positions held
    kv: list[torch.Tensor]  # per local layer: [2, heads, length, head_dim], keys then values
    outputs: torch.Tensor | None  # [length, hidden_size] where the partition keeps its outputs (not the last), else None


class NodeClient(Protocol):
    """A partition node as the coordinator's engine sees it."""

    async def embed(self, items: list[tuple[list[int], int]]) -> list[torch.Tensor]: ...
    async def step(self, batch: StepBatch) -> StepResult: ...
    async def release(self, session_ids: list[str]) -> None: ...
    async def outputs(self, session_id: str, start: int, end: int) -> torch.Tensor:
        """The output rows [start, end) the node kept for the session (not the last
        partition): the next partition's inputs, to rebuild its cache. CacheMiss if not kept."""
        ...

    async def export_session(self, session_id: str) -> SessionSnapshot:
        """A copy of everything the node holds for the session; CacheMiss if it holds none."""
        ...

    async def import_session(self, session_id: str, snapshot: SessionSnapshot) -> int:
        """Start (or replace) the session from another replica's export; returns the
        positions it now holds (the snapshot's length). StepInputError if the
        snapshot does not fit this node's partition, dtype, context or budget."""
        ...

    async def pull_session(self, session_id: str, source_address: str) -> int:
        """import_session of the export of the replica at `source_address`, which this
        node reads itself (node to node); CacheMiss if the source does not hold the
        session, SessionSourceFailed if this node cannot read the source."""
        ...


class ChainClient(Protocol):
    """Relay: one step through a whole chain of nodes, which pass the rows on
    among themselves; the last answers (its StepResult, with `partition_ms`).
    Raises ChainStepFailed."""

    async def step(self, chain: list[NodeClient], batch: StepBatch) -> StepResult: ...


# -- errors -------------------------------------------------------------------


class CacheMiss(Exception):
    """A step for a session the node does not hold at that position (or outputs,
    or prefix blocks, it does not keep).

    Raised by the node's KV store; seen by the coordinator (after the wire, as
    FAILED_PRECONDITION) as the signal to rebuild that node's cache for the
    sequences of that step, or replay them from position 0.
    `misses` maps session id -> why; a client that only has the remote message
    passes it as `detail` and leaves `misses` empty.
    """

    def __init__(self, misses: Mapping[str, str], detail: str | None = None) -> None:
        self.misses = dict(misses)
        super().__init__(detail or "cache miss: " + "; ".join(f"{sid}: {why}" for sid, why in self.misses.items()))


class CacheBudgetExceeded(Exception):
    """One step needs more KV positions than the node's whole budget."""


class StepInputError(ValueError):
    """A malformed embed or step: shapes, lengths, positions, token ids, tensor bytes."""


class WrongPartition(Exception):
    """The call needs something this partition does not hold (only the last one embeds)."""


class NodeNotReady(Exception):
    """The node is up but has not loaded its weights yet."""


class SessionSourceFailed(Exception):
    """A node told to pull a session from another replica could not reach or read
    it (the source is gone, or this node cannot or may not call it): the
    coordinator moves the session through itself instead, which tells those apart."""


class NodeFailed(Exception):
    """A node could not be reached, timed out, or failed the call: fail over."""


class StepFailed(NodeFailed):
    """The node answered, with an internal error on this step: it is up (its probes
    say so), the input may be what fails. Its sequences are retried once, then fail;
    the node is not marked down, so one poisoned request cannot take a partition out."""


class ChainStepFailed(Exception):
    """A relayed step failed: `cause` is what a star step to the node at chain index
    `index` would have raised (CacheMiss, StepFailed, NodeFailed, ...); `index`
    is None when nothing says which node it was (a deadline). `by_peer`: the node
    before it could not reach it, which may be the link between them (a network
    policy, a node without client certificates), not the node."""

    def __init__(self, index: int | None, cause: Exception, by_peer: bool = False) -> None:
        self.index, self.cause, self.by_peer = index, cause, by_peer
        super().__init__(f"{'' if index is None else f'partition {index}: '}{cause}")
