"""The coordinator's generation engine: iteration-level scheduling over the chain.

Every iteration takes all running sequences as one batch through partition
0..N-1 (Orca-style: a request joins at the next iteration and leaves as soon
as it finishes). A sequence without a cached input (new, or one whose caches
could not be rebuilt) is prefilled: its history is embedded and run from
position 0, or from the end of the prompt blocks the chain's nodes kept from an
earlier request (prefix reuse, core.prefix_cache).

A partition that loses a sequence's cache (its replica died, or evicted it) is
rebuilt alone, as Petals rebuilds a failed server's span: from the output rows
the partition before it kept (core.kv_cache), or the embeddings for partition 0;
the other partitions recompute nothing. Only when that is impossible does the
sequence replay from position 0 through the whole chain.

The engine talks to nodes through `NodeClient` (core.node_contract, which also
names the errors a node raises); the gRPC shell provides it. Nothing here
imports model code: the coordinator process never loads the checkpoint readers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import torch

from .engine_observer import NO_GENERATION_OBSERVER, GenerationObserver
from .generation_types import (  # noqa: F401  (re-exported: the engine's API)
    Event,
    FinishEvent,
    GenerationError,
    GenerationRequest,
    PartitionTiming,
    SamplingSpec,
    TokenEvent,
)
from .migration import DrainProgress
from .node_contract import (
    CacheMiss,
    ChainClient,
    ChainStepFailed,
    NodeClient,
    NodeFailed,
    SequenceStep,
    SessionSourceFailed,
    StepBatch,
    StepFailed,
)
from .prefix_cache import BLOCK_TOKENS, PrefixIndex, block_hashes, reusable_blocks
from .routing import NoHealthyReplica, Replica, Router

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Sequence:
    req: GenerationRequest
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    chain: list[Replica] | None = None
    generated: list[int] = field(default_factory=list)
    position: int = 0  # positions the chain's caches hold
    next_input: torch.Tensor | None = None  # None: (re)prefill the whole history
    replays: int = 0
    migrations: int = 0  # times its K/V moved to another replica (a drain)
    step_failures: int = 0  # internal errors of nodes on its steps (StepFailed)
    started: float = field(default_factory=time.perf_counter)
    last_token_at: float = 0.0
    step_ms: dict[int, float] = field(default_factory=dict)  # this iteration, per partition
    total_ms: dict[int, float] = field(default_factory=dict)
    done: bool = False
    lane: _Lane | None = None
    parked_since: float | None = None  # waiting for a partition to have a usable replica
    # A relayed step of it failed with nothing to say which node: it goes on in the
    # star, where every failure names its node, so a hung node is found and avoided.
    unrelayed: bool = False
    # Partitions whose replica lost this sequence's cache: rebuilt, up to
    # `position`, before its next step (GenerationEngine._rebuild).
    stale: set[int] = field(default_factory=set)
    prompt_hashes: tuple[bytes, ...] | None = None  # prefix reuse: its prompt's block hashes, once computed
    reuse_blocks: int = 0  # the next step starts its caches from this many kept blocks
    no_reuse: bool = False  # a node no longer kept blocks it was to reuse: prefill in full
    # Ended from outside its lane (a cancel, a client gone), maybe while a step of it was in
    # flight: that step can still (re)create its cache on a node after the release was sent
    # (a rebuild from position 0), so its lane releases it again once the iteration is over.
    ended_outside: bool = False

    @property
    def session_id(self) -> str:
        return self.req.request_id

    def restart(self) -> None:
        """Run the whole history again from position 0 at the next iteration."""
        self.next_input = None
        self.position = 0
        self.stale.clear()
        self.reuse_blocks = 0

    def lose(self, partition: int) -> None:
        """That partition's replica no longer holds this sequence's cache."""
        if self.reuse_blocks:  # its caches were to start from kept blocks, and none exists yet
            self.restart()
        elif self.position > 0:
            self.stale.add(partition)

    @property
    def history(self) -> list[int]:
        return self.req.prompt_ids + self.generated


@dataclass(eq=False)
class _Lane:
    """One micro-batch: the sequences that step through the chain together."""

    index: int
    running: list[_Sequence] = field(default_factory=list)
    waiting: list[_Sequence] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None

    @property
    def load(self) -> int:
        return len(self.running) + len(self.waiting)


class GenerationEngine:
    def __init__(
        self,
        router: Router,
        client_for: Callable[[Replica], NodeClient],
        eos_token_id: int,
        n_ctx: int,
        vocab_size: int,
        max_batch_size: int = 64,
        max_replays: int = 8,
        micro_batches: int | None = None,
        prefill_chunk_tokens: int = 256,
        max_queue: int = 256,
        max_tenant_share: float = 0.5,
        unavailable_grace_s: float = 10.0,
        observer: GenerationObserver = NO_GENERATION_OBSERVER,
        relay: ChainClient | None = None,
        prefix_index: PrefixIndex | None = None,
        pull_sessions: bool = True,
    ) -> None:
        self.router = router
        self.client_for = client_for
        # Relay: the nodes pass a step's rows along the chain themselves (two legs
        # per token for the coordinator, not two per partition); None: the star.
        self.relay = relay
        # Live migration: the target replica reads a moving session from the source
        # itself (`_pull`); False: the coordinator always carries it.
        self.pull_sessions = pull_sessions
        # Prefix reuse (core.prefix_cache): what each node kept of earlier prompts; None: off.
        self.prefix_index = prefix_index
        self.eos_token_id = eos_token_id
        self.n_ctx = n_ctx
        self.vocab_size = vocab_size
        self.max_batch_size = max_batch_size
        self.max_replays = max_replays
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.max_queue = max_queue
        # Fair sharing between tenants (API keys): one holds at most this fraction of
        # running + queued, so another always finds room, and a free batch slot goes to
        # the waiting tenant that runs the fewest sequences. Requests without a tenant
        # (a gateway without keys) are neither capped nor reordered.
        self.max_tenant_share = max_tenant_share
        self._served: dict[str, int] = {}  # tenant -> the join count when it last got a slot
        self._joins = 0
        # A partition with no usable replica makes its sequences wait this long
        # for one to come back (a restart, a probe) before they fail.
        self.unavailable_grace_s = unavailable_grace_s
        self.observer = observer
        self._sequences: dict[str, _Sequence] = {}
        # Pipeline parallelism: this many micro-batches are in flight at once,
        # each in its own lane, so while one runs on partition 1 the next can
        # run on partition 0. One per partition fills the pipeline.
        n_lanes = micro_batches or router.num_partitions
        self._lanes = [_Lane(i) for i in range(n_lanes)]
        self._lanes_in_flight = 0  # lanes inside an iteration: told to nodes, which size their threads by it
        self._background: set[asyncio.Task] = set()
        self._drains: dict[Replica, DrainProgress] = {}  # draining replica -> what moving off it did

    # -- public ---------------------------------------------------------------

    def validate(self, req: GenerationRequest) -> None:
        if not req.prompt_ids:
            raise GenerationError("invalid", "the prompt has no tokens")
        bad = [t for t in req.prompt_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise GenerationError("invalid", f"token ids {bad[:5]} outside the vocabulary [0, {self.vocab_size})")
        if req.max_tokens < 1:
            raise GenerationError("invalid", "max_tokens must be at least 1")
        excess = len(req.prompt_ids) + req.max_tokens - self.n_ctx
        if excess > 0:
            raise GenerationError(
                "invalid",
                f"prompt ({len(req.prompt_ids)} tokens) + max_tokens ({req.max_tokens}) exceeds the context of "
                f"{self.n_ctx} by {excess}: shorten the prompt or lower max_tokens",
            )

    async def generate(self, req: GenerationRequest) -> AsyncIterator[Event]:
        """Token events, then one FinishEvent; raises GenerationError.

        Closing the iterator early (a client that went away) cancels the
        sequence and frees its caches on every node.
        """
        self.validate(req)
        if self.running >= self.queue_capacity:
            self.observer.rejected("overloaded")
            raise GenerationError("overloaded", f"{self.running} requests are running or queued (the limit): retry in a moment")
        if req.tenant and self.max_tenant_share < 1:
            share = max(1, int(self.queue_capacity * self.max_tenant_share))
            held = sum(1 for s in self._sequences.values() if s.req.tenant == req.tenant and not s.done)
            if held >= share:
                self.observer.rejected("tenant_share")
                raise GenerationError(
                    "overloaded",
                    f"this key has {held} requests running or queued, its share of the queue: retry in a moment",
                )
        if req.request_id in self._sequences:
            raise GenerationError("invalid", f"request id {req.request_id!r} is already running")
        seq = _Sequence(req)
        self._sequences[req.request_id] = seq
        self.observer.admitted(len(req.prompt_ids))
        self._admit(seq)
        try:
            while True:
                event = await seq.events.get()
                if isinstance(event, Exception):
                    raise event
                yield event
                if isinstance(event, FinishEvent):
                    return
        finally:
            if not seq.done:
                seq.ended_outside = True
                self._finish(seq)

    @property
    def running(self) -> int:
        return sum(lane.load for lane in self._lanes)

    @property
    def queue_capacity(self) -> int:
        """Running + waiting beyond which a new request is refused as overloaded."""
        return self.max_batch_size + self.max_queue

    @property
    def sequences_running(self) -> int:
        """In a lane's running batch (vLLM's num_requests_running)."""
        return sum(1 for lane in self._lanes for s in lane.running if not s.done)

    @property
    def sequences_waiting(self) -> int:
        """Admitted, waiting to join a lane's batch (vLLM's num_requests_waiting)."""
        return sum(len(lane.waiting) for lane in self._lanes)

    def tasks(self) -> list[dict]:
        """Running requests: id, tokens so far, age, the chain of replicas."""
        now = time.perf_counter()
        return [
            {
                "request_id": seq.session_id,
                "prompt_tokens": len(seq.req.prompt_ids),
                "generated_tokens": len(seq.generated),
                "max_tokens": seq.req.max_tokens,
                "age_s": now - seq.started,
                "state": "queued"
                if seq.lane and seq in seq.lane.waiting
                else ("prefill" if seq.next_input is None else "decode"),
                "chain": [r.node_id for r in seq.chain] if seq.chain else [],
                "replays": seq.replays,
                "migrations": seq.migrations,
            }
            for seq in self._sequences.values()
        ]

    def holds(self, request_id: str) -> bool:
        return request_id in self._sequences

    def sequences_on(self, replica: Replica) -> int:
        """Sequences whose chain runs through the replica (a drain waits for none)."""
        return sum(1 for s in self._sequences.values() if not s.done and s.chain and replica in s.chain)

    def drain_progress(self, replica: Replica) -> DrainProgress:
        """What moving sequences off the (draining) replica did so far."""
        return self._drains.setdefault(replica, DrainProgress())

    def forget_drain(self, replica: Replica) -> None:
        self._drains.pop(replica, None)

    def cancel(self, request_id: str) -> bool:
        """Stop a request; its stream ends with finish_reason "cancelled" and its caches are freed."""
        seq = self._sequences.get(request_id)
        if seq is None or seq.done:
            return False
        seq.ended_outside = True
        self._finish(seq, "cancelled")
        return True

    async def close(self) -> None:
        for lane in self._lanes:
            if lane.task:
                lane.task.cancel()
        for task in list(self._background):
            task.cancel()

    # -- the loop -------------------------------------------------------------

    def _admit(self, seq: _Sequence) -> None:
        """A new sequence joins the least loaded lane at that lane's next iteration."""
        lane = min(self._lanes, key=lambda lane: lane.load)
        seq.lane = lane
        lane.waiting.append(seq)
        lane.wake.set()
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._run(lane), name=f"generation-lane-{lane.index}")

    def _join(self, lane: _Lane, room: int) -> None:
        """Move up to `room` waiting sequences into the lane's batch: in arrival order, except
        that with more waiting than room, and more than one tenant among them, each slot goes
        to the tenant running the fewest sequences (over all lanes), the one served longest
        ago first: round robin between keys, so one with a long queue cannot hold every slot."""
        if room <= 0 or not lane.waiting:
            return
        if len(lane.waiting) <= room or len({s.req.tenant for s in lane.waiting}) == 1:
            joining = lane.waiting[:room]
            del lane.waiting[:room]
            for seq in joining:
                self._mark_served(seq.req.tenant)
        else:
            running = Counter(s.req.tenant for each in self._lanes for s in each.running if not s.done)
            joining = []
            for _ in range(room):
                # min() keeps the first of equals: arrival order within a tenant and among ties
                chosen = min(lane.waiting, key=lambda s: (running[s.req.tenant], self._served.get(s.req.tenant, 0)))
                lane.waiting.remove(chosen)
                joining.append(chosen)
                running[chosen.req.tenant] += 1
                self._mark_served(chosen.req.tenant)
        lane.running += joining

    def _mark_served(self, tenant: str) -> None:
        if not tenant:
            return
        self._joins += 1
        self._served[tenant] = self._joins
        if len(self._served) > 4096:  # keys long gone: keep those with sequences
            live = {s.req.tenant for s in self._sequences.values()}
            self._served = {t: n for t, n in self._served.items() if t in live}

    async def _run(self, lane: _Lane) -> None:
        room_per_lane = max(1, -(-self.max_batch_size // len(self._lanes)))
        while True:
            if not lane.running and not lane.waiting:
                lane.wake.clear()
                await lane.wake.wait()
            self._join(lane, room_per_lane - len(lane.running))
            batch = [s for s in lane.running if not s.done]
            self._lanes_in_flight += 1
            lanes_in_flight, started = self._lanes_in_flight, time.perf_counter()
            try:
                await self._iteration(batch)
                if batch:
                    self.observer.iteration(len(batch), lanes_in_flight, time.perf_counter() - started)
            except Exception as exc:  # keep serving others; these requests get the error
                log.exception("iteration failed")
                for seq in batch:
                    self._fail(seq, GenerationError("internal", f"generation failed: {exc}"))
            finally:
                self._lanes_in_flight -= 1
                for seq in batch:
                    if seq.ended_outside:
                        for replica in seq.chain or []:
                            self._release_in_background(replica, seq.session_id)
            lane.running = [s for s in lane.running if not s.done]

    async def _iteration(self, batch: list[_Sequence]) -> None:
        for seq in batch:
            seq.step_ms = {}
            self._route(seq)
        ready = [s for s in batch if not s.done and s.parked_since is None]
        if not ready:
            await asyncio.sleep(0.05)  # every sequence waits for a replica: don't spin
            return
        moving = [s for s in ready if s.chain and any(r.draining for r in s.chain)]
        if moving:  # between two of their steps: nothing of theirs is in flight
            started = time.perf_counter()
            await asyncio.gather(*(self._migrate(s, started) for s in moving))
            ready = [s for s in ready if not s.done]
        rebuilt = await asyncio.gather(*(self._rebuild(s) for s in ready if s.stale))
        if rebuilt and not all(rebuilt):  # those that could not be rebuilt yet wait for the next iteration
            ready = [s for s in ready if not s.stale and not s.done]
        rows = await self._inputs(ready)
        if self.relay is not None and self.router.num_partitions > 1:
            relayed = {s: r for s, r in rows.items() if not s.unrelayed}
            starred = {s: r for s, r in rows.items() if s.unrelayed}
            chains = _group(list(relayed), lambda s: tuple(s.chain))
            await asyncio.gather(
                *(self._step_chain(chain, group, relayed) for chain, group in chains.items()), self._run_star(starred)
            )
            return
        await self._run_star(rows)

    async def _run_star(self, rows: dict[_Sequence, torch.Tensor]) -> None:
        """The coordinator calls each partition in turn (rows go out and come back every time)."""
        for partition in range(self.router.num_partitions - 1):
            if not rows:
                return
            rows = await self._run_partition(partition, rows)
        if rows:
            await self._run_partition(self.router.num_partitions - 1, rows)

    def _route(self, seq: _Sequence) -> None:
        """Give the sequence a usable replica for every partition.

        It keeps its chain (affinity, where its caches are) until a replica
        becomes unusable; then that partition moves to another replica, whose
        cache is rebuilt before the next step (`_rebuild`).
        """
        try:
            if seq.chain is None:
                seq.chain = self.router.chain()
            else:
                for p, replica in enumerate(seq.chain):
                    if not self.router.usable(replica):
                        seq.chain[p] = self.router.pick(p, avoid=replica)
                        self._release_in_background(replica, seq.session_id)
                        self._replay(seq, f"moved off {replica.node_id}, which is unusable", "moved", partition=p)
            seq.parked_since = None
        except NoHealthyReplica as exc:
            now = time.perf_counter()
            seq.parked_since = seq.parked_since or now
            if now - seq.parked_since > self.unavailable_grace_s:
                self._fail(seq, GenerationError("unavailable", f"{exc} (waited {self.unavailable_grace_s:.0f}s for one)"))

    async def _migrate(self, seq: _Sequence, started: float) -> None:
        """Move the sequence off every draining replica of its chain (core.migration): its
        session read by another replica of the partition from the draining one (`_pull`),
        or else exported there and imported into the other through the coordinator. Where
        the source cannot export, the target rebuilds it (`lose`); where no other replica
        is usable, or the target fails, it stays and tries again at its next iteration."""
        for p, source in enumerate(seq.chain):
            if not source.draining:
                continue
            try:
                target = self.router.pick(p, avoid=source)
            except NoHealthyReplica:
                continue
            progress = self.drain_progress(source)
            transferred = direct = False
            if seq.position > 0 and not seq.reuse_blocks:  # else it holds nothing there yet
                pull = self.pull_sessions and target.node_id not in progress.unpullable
                direct = transferred = pull and await self._pull(seq, source, target)
                if not direct:
                    try:
                        snapshot = await self._unless_down(source, self.client_for(source).export_session(seq.session_id))
                    except (CacheMiss, NodeFailed) as exc:
                        log.info("%s cannot export %s (%s): rebuilt on %s", source.node_id, seq.session_id, exc, target.node_id)
                        seq.lose(p)
                        progress.recomputed += 1
                    else:
                        try:
                            await self._unless_down(target, self.client_for(target).import_session(seq.session_id, snapshot))
                        except (CacheMiss, NodeFailed, ValueError) as exc:  # the target is at fault: try another later
                            log.warning("%s refused %s's K/V: %s", target.node_id, seq.session_id, exc)
                            continue
                        transferred = True
            if seq.done:  # cancelled meanwhile: its releases went to the old chain
                self._release_in_background(target, seq.session_id)
                return
            seq.chain[p] = target
            self._release_in_background(source, seq.session_id)
            seconds = time.perf_counter() - started
            if transferred:
                seq.migrations += 1
                progress.record_moved(seconds, direct)
            self.observer.migrated(p, seconds, transferred)
            log.info("moved %s from %s to %s in %.1f ms", seq.session_id, source.node_id, target.node_id, seconds * 1000)

    async def _pull(self, seq: _Sequence, source: Replica, target: Replica) -> bool:
        """The target reads the session from the source itself, node to node. False
        where it cannot, for any reason (no route between the nodes, the source
        gone, the target refusing): then the coordinator moves the session through
        itself (`_migrate`), which tells those cases apart."""
        try:
            await self._unless_down(target, self.client_for(target).pull_session(seq.session_id, source.address))
        except SessionSourceFailed as exc:
            log.info("%s could not read from %s (%s): this drain moves its sequences through the coordinator",
                     target.node_id, source.node_id, exc)  # fmt: skip
            self.drain_progress(source).unpullable.add(target.node_id)
            return False
        except (CacheMiss, NodeFailed, ValueError) as exc:
            log.info("%s could not pull %s from %s (%s): moving it through the coordinator", target.node_id,
                     seq.session_id, source.node_id, exc)  # fmt: skip
            return False
        return True

    async def _inputs(self, batch: list[_Sequence]) -> dict[_Sequence, torch.Tensor]:
        """Each sequence's rows into partition 0: its next token's embedding, or
        the next chunk of its history (a prefill, or a replay from position 0).

        Prefill is chunked so a long prompt joining the batch delays the
        running sequences by one chunk's compute per iteration, not the whole prompt.
        A chunk ends at the next multiple of the chunk size, whatever else is in
        the batch: a prompt splits the same way alone and under load (in bfloat16
        attention over a split prefill rounds otherwise than over a whole one, and
        greedy tokens flipped at near-ties: 4 of 30 tiny-checkpoint prompts). A
        chunk that does not fit the iteration's remaining budget waits for the next.
        """
        rows: dict[_Sequence, torch.Tensor] = {}
        size = self.prefill_chunk_tokens
        budget = size
        chunks: dict[_Sequence, list[int]] = {}
        for seq in batch:
            if seq.next_input is not None:
                rows[seq] = seq.next_input
                continue
            if budget < size and self._chunk_end(seq) - seq.position > budget:
                continue
            if seq.position == 0:
                self._reuse_prefix(seq)
            chunks[seq] = seq.history[seq.position : self._chunk_end(seq)]
            budget -= len(chunks[seq])
        for replica, group in _group(list(chunks), lambda s: s.chain[-1]).items():
            try:
                hidden = await self._unless_down(
                    replica, self.client_for(replica).embed([(chunks[s], s.position) for s in group])
                )
            except NodeFailed as exc:
                self._node_failed(replica, group, exc)
                continue
            rows.update(zip(group, hidden, strict=True))
        return rows

    def _chunk_end(self, seq: _Sequence) -> int:
        """Where the prefill chunk starting at the sequence's position ends: the next
        multiple of the chunk size (as _refill cuts a rebuild), or its history's end."""
        size = self.prefill_chunk_tokens
        return min(len(seq.history), (seq.position // size + 1) * size)

    async def _run_partition(self, partition: int, rows: dict[_Sequence, torch.Tensor]) -> dict:
        """One partition's step for every sequence, one call per replica in use.

        Returns each sequence's output rows for the next partition; after the
        last partition the tokens have been accepted and nothing is returned.
        """
        # A sequence cancelled while an earlier partition ran has had its
        # caches released: stepping it further would open them again.
        groups = _group([s for s in rows if not s.done], lambda s: s.chain[partition])
        calls = [self._step_group(partition, replica, group, rows) for replica, group in groups.items()]
        out: dict[_Sequence, torch.Tensor] = {}
        for result in await asyncio.gather(*calls):
            out.update(result)
        return out

    async def _step_group(self, partition: int, replica: Replica, group: list[_Sequence], rows) -> dict:
        batch = self._batch(group, rows)
        started = time.perf_counter()
        replica.in_flight += len(group)
        try:
            result = await self._unless_down(replica, self.client_for(replica).step(batch))
        except CacheMiss as exc:
            self._cache_missed(replica, partition, group, exc)
            return {}
        except StepFailed as exc:
            self._step_failed(replica, group, exc)
            return {}
        except NodeFailed as exc:
            self._node_failed(replica, group, exc)
            return {}
        finally:
            replica.in_flight -= len(group)
        seconds = time.perf_counter() - started
        ms = seconds * 1000
        self.router.record_success(replica, ms)
        self.observer.step(partition, replica.node_id, seconds)
        for seq in group:
            if seq.done:  # cancelled during the step, whose cache may postdate the release
                self._release_in_background(replica, seq.session_id)
            seq.step_ms[partition] = ms
            seq.total_ms[partition] = seq.total_ms.get(partition, 0.0) + ms
        if partition < self.router.num_partitions - 1:
            return dict(zip(group, torch.split(result.hidden, batch.lengths), strict=True))
        self._stepped(group, batch, result)
        return {}

    async def _step_chain(self, chain: tuple[Replica, ...], group: list[_Sequence], rows) -> None:
        """One relayed step of `group` through its whole chain (core.node_contract.ChainClient)."""
        group = [s for s in group if not s.done]
        if not group:
            return
        batch = self._batch(group, rows)
        for replica in chain:
            replica.in_flight += len(group)
        try:
            result = await self._unless_chain_down(chain, self.relay.step([self.client_for(r) for r in chain], batch))
        except ChainStepFailed as exc:
            self._chain_failed(chain, group, exc)
            return
        finally:
            for replica in chain:
                replica.in_flight -= len(group)
        for partition, (replica, ms) in enumerate(zip(chain, result.partition_ms, strict=False)):
            self.router.record_success(replica, ms)
            self.observer.step(partition, replica.node_id, ms / 1000)
        for seq in group:
            if seq.done:  # cancelled during the step, whose caches may postdate the release
                for replica in chain:
                    self._release_in_background(replica, seq.session_id)
            for partition, ms in enumerate(result.partition_ms):
                seq.step_ms[partition] = ms
                seq.total_ms[partition] = seq.total_ms.get(partition, 0.0) + ms
        self._stepped(group, batch, result)

    def _batch(self, group: list[_Sequence], rows: dict[_Sequence, torch.Tensor]) -> StepBatch:
        """The step of `group`: prompt chunks carry the prompt's block hashes, for
        the nodes to keep its blocks, and the first one those its caches start from."""
        steps = []
        for s in group:
            prefill = self.prefix_index is not None and s.prompt_hashes and s.position < len(s.req.prompt_ids)
            hashes = s.prompt_hashes if prefill else ()
            steps.append(SequenceStep(s.session_id, s.position, rows[s].shape[0], self._sampling(s), hashes, s.reuse_blocks))
        return StepBatch(steps, torch.cat([rows[s] for s in group]), concurrent_steps=self._lanes_in_flight)

    def _stepped(self, group: list[_Sequence], batch: StepBatch, result) -> None:
        """The whole chain took the step: positions advance, the tokens are accepted."""
        for i, (seq, step) in enumerate(zip(group, batch.sequences, strict=True)):
            seq.position = step.position + step.length
            seq.reuse_blocks = 0
            if step.block_hashes:  # every node of the chain now keeps the blocks it holds whole
                for replica in seq.chain:
                    self.prefix_index.stored(replica.node_id, step.block_hashes[: seq.position // BLOCK_TOKENS])
            top = result.top_logprobs[i] if i < len(result.top_logprobs) else ()
            self._accept(seq, result.token_ids[i], result.logprobs[i], result.next_input[i : i + 1], top)

    def _reuse_prefix(self, seq: _Sequence) -> None:
        """Start a prefill from position 0 after the prompt blocks every node of its
        chain kept from earlier requests (as far as the coordinator knows)."""
        if self.prefix_index is None:
            return
        if seq.prompt_hashes is None:
            seq.prompt_hashes = tuple(block_hashes(seq.req.prompt_ids))
        if seq.no_reuse:
            return
        usable = seq.prompt_hashes[: reusable_blocks(len(seq.history))]
        seq.reuse_blocks = self.prefix_index.common_prefix([r.node_id for r in seq.chain], usable)
        seq.position = seq.reuse_blocks * BLOCK_TOKENS
        self.observer.prefix_lookup(len(seq.req.prompt_ids), seq.position)

    def _cache_missed(self, replica: Replica, partition: int, group: list[_Sequence], exc: CacheMiss) -> None:
        """A node did not hold what a step needed. A sequence that was to start from
        kept prompt blocks prefills in full; any other has that partition rebuilt.
        Sequences the node did not name (a miss refuses the whole batch) just step again."""
        for seq in group:
            if exc.misses and seq.session_id not in exc.misses:
                continue
            why = f"{replica.node_id} refused the step: {exc}"
            if seq.reuse_blocks:
                self.prefix_index.forget(replica.node_id)
                seq.no_reuse = True
                self._replay(seq, why, "cache_miss")
            else:
                self._replay(seq, why, "cache_miss", partition=partition)

    async def _rebuild(self, seq: _Sequence) -> bool:
        """Rebuild the caches of its stale partitions, lowest first, up to its
        position, each from the output rows the partition before it kept (partition
        0: the history's embeddings). True when none is left stale."""
        end, chain = seq.position, seq.chain
        for p in sorted(seq.stale):
            started = time.perf_counter()
            source = chain[p - 1] if p > 0 else chain[-1]
            try:
                if p > 0:
                    rows = await self._unless_down(source, self.client_for(source).outputs(seq.session_id, 0, end))
                else:
                    (rows,) = await self._unless_down(source, self.client_for(source).embed([(seq.history[:end], 0)]))
            except CacheMiss:  # the partition before lost it too: rebuild that one first
                seq.lose(p - 1)
                return False
            except NodeFailed as exc:
                self._node_failed(source, [seq], exc)
                return False
            if not await self._refill(seq, chain[p], rows):
                return False
            seq.stale.discard(p)
            self.observer.rebuilt(p, end)
            log.info(
                "rebuilt %s on %s: %d positions in %.2fs", seq.session_id, chain[p].node_id, end, time.perf_counter() - started
            )
        return True

    async def _refill(self, seq: _Sequence, replica: Replica, rows: torch.Tensor) -> bool:
        """Step `rows` (positions [0, len)) into the replica's cache for `seq`, in prefill
        chunks; its outputs are not needed (the partitions after it kept their caches)."""
        chunk = self.prefill_chunk_tokens
        for start in range(0, rows.shape[0], chunk):
            part = rows[start : start + chunk]
            batch = StepBatch([SequenceStep(seq.session_id, start, part.shape[0], self._sampling(seq))], part)
            try:
                await self._unless_down(replica, self.client_for(replica).step(batch))
            except CacheMiss as exc:  # a chunk after the first, refused: the node lost it meanwhile
                self._replay(seq, f"{replica.node_id} refused a rebuild: {exc}", "cache_miss")
                return False
            except StepFailed as exc:
                self._step_failed(replica, [seq], exc)
                return False
            except NodeFailed as exc:
                self._node_failed(replica, [seq], exc)
                return False
        return True

    def _chain_failed(self, chain: tuple[Replica, ...], group: list[_Sequence], exc: ChainStepFailed) -> None:
        """As a star step to the node the failure names would have failed."""
        cause = exc.cause
        if exc.index is None or exc.by_peer:
            # Nothing pins it on a node, or only a peer does (the link between two
            # nodes may be what fails: a network policy, a node without client
            # certificates): the step is taken again in the star, where every failure
            # names its node as the coordinator sees it, and a node that lost the
            # sequence is rebuilt alone. A node that did die is also seen by the
            # coordinator's own stream to it and by its probes.
            log.info("a relayed step of %d sequences failed (%s): they go on in the star", len(group), cause)
            for seq in group:
                seq.unrelayed = True
            return
        replica = chain[exc.index]
        if isinstance(cause, CacheMiss):
            self._cache_missed(replica, exc.index, group, cause)
        elif isinstance(cause, StepFailed):
            self._step_failed(replica, group, cause)
        elif isinstance(cause, NodeFailed):
            self._node_failed(replica, group, cause)
        else:  # a malformed step: as in the star, the iteration fails these requests
            raise cause

    async def _unless_chain_down(self, chain: tuple[Replica, ...], call):
        """`_unless_down` for every replica of a chain: the first marked down ends the step."""
        for index, replica in enumerate(chain):
            if replica.down.is_set():
                call.close()
                raise ChainStepFailed(index, NodeFailed(f"{replica.node_id} is marked down"))
        task = asyncio.ensure_future(call)
        cut: list[int] = []

        def on_down(index: int) -> None:
            cut.append(index)
            task.cancel()

        forgets = [replica.down.on_set(lambda i=i: on_down(i)) for i, replica in enumerate(chain)]
        try:
            return await task
        except asyncio.CancelledError:
            if cut:
                node = chain[cut[0]].node_id
                raise ChainStepFailed(cut[0], NodeFailed(f"{node} was marked down while the step was in flight")) from None
            raise
        finally:
            for forget in forgets:
                forget()

    # -- per sequence ---------------------------------------------------------

    def _sampling(self, seq: _Sequence) -> SamplingSpec:
        if not seq.req.ignore_eos and len(seq.generated) < seq.req.min_tokens:
            return dataclasses.replace(seq.req.sampling, suppress=(self.eos_token_id,))
        return seq.req.sampling

    def _accept(
        self, seq: _Sequence, token: int, logprob: float, next_input: torch.Tensor, top: tuple[tuple[int, float], ...] = ()
    ) -> None:
        if seq.done:  # cancelled while the step was in flight
            return
        if seq.position < len(seq.history):  # a prefill chunk short of the end: no token yet
            return
        seq.next_input = next_input
        if token == self.eos_token_id and not seq.req.ignore_eos:
            self._finish(seq, "eos")
            return
        seq.generated.append(token)
        now = time.perf_counter()
        if len(seq.generated) == 1:
            self.observer.first_token(now - seq.started)
        else:
            self.observer.next_token(now - seq.last_token_at)
        seq.last_token_at = now
        timings = [PartitionTiming(p, seq.chain[p].node_id, ms) for p, ms in sorted(seq.step_ms.items())]
        seq.events.put_nowait(TokenEvent(token, logprob, len(seq.generated) - 1, timings, tuple(top)))
        if len(seq.generated) >= seq.req.max_tokens or len(seq.history) >= self.n_ctx:
            self._finish(seq, "length")

    def _replay(self, seq: _Sequence, why: str, reason: str, partition: int | None = None) -> None:
        """Rebuild `partition`'s cache of the sequence (None: all, from position 0).
        `reason`: "cache_miss", "moved" or "step_failed", what the replay is counted as."""
        seq.replays += 1
        self.observer.replay(reason)
        if seq.replays > self.max_replays:
            self._fail(seq, GenerationError("unavailable", f"gave up after {self.max_replays} replays: {why}"))
            return
        if partition is None:
            log.info("replaying %s from position 0 (%s)", seq.session_id, why)
            seq.restart()
        else:
            log.info("rebuilding %s on partition %d (%s)", seq.session_id, partition, why)
            seq.lose(partition)

    async def _unless_down(self, replica: Replica, call):
        """Await `call`, or give up as soon as the replica is marked down
        (a probe failed, another step on it failed): a cut link then costs a
        probe interval, not a whole step deadline."""
        if replica.down.is_set():
            call.close()
            raise NodeFailed(f"{replica.node_id} is marked down")
        task = asyncio.ensure_future(call)
        cut = False

        def on_down() -> None:
            nonlocal cut
            cut = True
            task.cancel()

        forget = replica.down.on_set(on_down)
        try:
            return await task
        except asyncio.CancelledError:
            if cut:  # not this coroutine's own cancellation: the replica went down
                raise NodeFailed(f"{replica.node_id} was marked down while the call was in flight") from None
            raise
        finally:
            forget()

    def _node_failed(self, replica: Replica, group: list[_Sequence], exc: Exception) -> None:
        """Mark the replica; its sequences move to another replica and replay there."""
        log.warning("%s failed: %s; failing over %d sequences", replica.node_id, exc, len(group))
        was_closed = self.router.clock() >= replica.open_until
        self.router.record_failure(replica)
        self.observer.failover(replica.partition, replica.node_id)
        if was_closed:
            self.observer.circuit_opened(replica.partition, replica.node_id)
        # No replay is counted here: the next iteration moves these sequences
        # off the replica (`_route`), and that move is the replay that counts;
        # if the replica stays usable, the next iteration rebuilds them on it.
        for seq in group:
            seq.lose(replica.partition)

    def _step_failed(self, replica: Replica, group: list[_Sequence], exc: StepFailed) -> None:
        """The node is up but failed on this step: retry each sequence once from
        position 0 (a transient fault), fail it the second time (its input is
        what fails). The replica stays in: its probes decide whether it is down."""
        log.warning("%s failed a step of %d sequences: %s", replica.node_id, len(group), exc)
        for seq in group:
            seq.step_failures += 1
            if seq.step_failures > 1:
                self._fail(seq, GenerationError("internal", f"{replica.node_id} failed on this request twice: {exc}"))
            else:
                self._replay(seq, f"{replica.node_id} failed the step: {exc}", "step_failed")

    def _fail(self, seq: _Sequence, exc: GenerationError) -> None:
        if not seq.done:
            if exc.kind in ("overloaded", "unavailable"):
                self.observer.rejected(exc.kind)
            seq.events.put_nowait(exc)
            self._finish(seq, outcome="error")

    def _finish(self, seq: _Sequence, reason: str | None = None, outcome: str = "cancelled") -> None:
        """`reason`: the finish reason the stream ends with; None: no FinishEvent (the
        client went away, or an error was queued), counted as `outcome`."""
        if seq.done:
            return
        seq.done = True
        self.observer.finished(reason or outcome, len(seq.generated), time.perf_counter() - seq.started)
        if seq.lane is not None and seq in seq.lane.waiting:
            seq.lane.waiting.remove(seq)
        if reason is not None:
            partitions = [PartitionTiming(p, seq.chain[p].node_id, ms) for p, ms in sorted(seq.total_ms.items())]
            seq.events.put_nowait(
                FinishEvent(
                    finish_reason=reason,
                    prompt_tokens=len(seq.req.prompt_ids),
                    completion_tokens=len(seq.generated),
                    inference_ms=(time.perf_counter() - seq.started) * 1000,
                    partitions=partitions,
                )
            )
        self._sequences.pop(seq.session_id, None)
        for replica in seq.chain or []:
            self._release_in_background(replica, seq.session_id)

    def _release_in_background(self, replica: Replica, session_id: str) -> None:
        task = asyncio.create_task(self._release(replica, session_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release(self, replica: Replica, session_id: str) -> None:
        try:
            await self.client_for(replica).release([session_id])
        except (NodeFailed, CacheMiss) as exc:  # its TTL frees it anyway
            log.debug("release on %s failed: %s", replica.node_id, exc)


def _group(seqs: list[_Sequence], key: Callable[[_Sequence], Replica]) -> dict[Replica, list[_Sequence]]:
    groups: dict[Replica, list[_Sequence]] = {}
    for seq in seqs:
        groups.setdefault(key(seq), []).append(seq)
    return groups
