"""Replicas of each partition, their health, and the choice of a chain.

A replica is usable when its last grpc.health.v1 probe said SERVING and its
circuit is closed. A failed step opens the circuit at once; it stays open
for a backoff that doubles with each consecutive failure, and the health
probe closes it again when the replica answers SERVING after the backoff.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

STRATEGIES = ("round_robin", "least_loaded", "latency")


class NoHealthyReplica(Exception):
    def __init__(self, partition: int) -> None:
        self.partition = partition
        super().__init__(f"partition {partition} has no SERVING node")


class DownEvent(asyncio.Event):
    """An Event that also calls back when set: a step waiting on the replica
    gives up through a callback, with no task of its own per call."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: set[Callable[[], None]] = set()

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when the event is set; returns what unregisters it."""
        self._callbacks.add(callback)
        return lambda: self._callbacks.discard(callback)

    def set(self) -> None:
        super().set()
        for callback in list(self._callbacks):
            callback()


@dataclass(eq=False)  # identity: a replica is a live thing, not a value
class Replica:
    node_id: str
    address: str
    partition: int
    status: str = "UNKNOWN"  # grpc.health.v1 status, UNREACHABLE, or MISCONFIGURED
    in_flight: int = 0  # sequences in steps sent to it and not answered yet
    layers: tuple[int, int] | None = None  # [start, end) as the node reports it
    latency_ewma_ms: float | None = None  # of its step calls
    consecutive_failures: int = 0
    missed_probes: int = 0  # consecutive probes that got no answer
    open_until: float = 0.0  # circuit open (not routed to) until this monotonic time
    # Set while the replica is unusable, so steps waiting on it give up at once.
    down: DownEvent = field(default_factory=DownEvent)
    # Node management: a cordoned replica takes no new sequence but keeps stepping
    # those it has; a draining one is cordoned and its sequences move off it
    # (their K/V transferred: core.engine, _migrate).
    cordoned: bool = False
    draining: bool = False

    def usable(self, now: float) -> bool:
        return self.status == "SERVING" and now >= self.open_until

    @property
    def circuit(self) -> str:
        return "open" if time.monotonic() < self.open_until else "closed"


@dataclass
class Router:
    num_partitions: int
    replicas: list[Replica] = field(default_factory=list)
    strategy: str = "least_loaded"
    base_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    ewma_alpha: float = 0.2
    # A SERVING replica is marked down after this many unanswered probes in a
    # row (one slow answer on a busy host is not a dead node); an explicit
    # NOT_SERVING (draining) or a failed step counts at once.
    missed_probes_to_down: int = 2
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"routing strategy {self.strategy!r}: use one of {STRATEGIES}")
        self._turn = [itertools.count() for _ in range(self.num_partitions)]

    def of_partition(self, partition: int) -> list[Replica]:
        return [r for r in self.replicas if r.partition == partition]

    def usable(self, replica: Replica) -> bool:
        return replica.usable(self.clock())

    def pick(self, partition: int, avoid: Replica | None = None) -> Replica:
        now = self.clock()
        candidates = [r for r in self.of_partition(partition) if r.usable(now) and not r.cordoned and r is not avoid]
        if not candidates:
            raise NoHealthyReplica(partition)
        turn = next(self._turn[partition])
        if self.strategy == "round_robin":
            return candidates[turn % len(candidates)]
        if self.strategy == "least_loaded":
            low = min(r.in_flight for r in candidates)
            tied = [r for r in candidates if r.in_flight == low]
            return tied[turn % len(tied)]
        # latency: the fastest EWMA; one never measured is tried first
        return min(candidates, key=lambda r: -1.0 if r.latency_ewma_ms is None else r.latency_ewma_ms)

    def chain(self) -> list[Replica]:
        return [self.pick(p) for p in range(self.num_partitions)]

    def ready(self) -> bool:
        now = self.clock()
        return all(any(r.usable(now) and not r.cordoned for r in self.of_partition(p)) for p in range(self.num_partitions))

    # -- what the engine and the health checker report --------------------------

    def record_success(self, replica: Replica, ms: float) -> None:
        replica.consecutive_failures = 0
        a = self.ewma_alpha
        replica.latency_ewma_ms = ms if replica.latency_ewma_ms is None else (1 - a) * replica.latency_ewma_ms + a * ms

    def record_failure(self, replica: Replica) -> None:
        """Open the circuit: no new routing to it until the backoff passes and a probe says SERVING."""
        replica.consecutive_failures += 1
        backoff = min(self.max_backoff_s, self.base_backoff_s * 2 ** (replica.consecutive_failures - 1))
        replica.open_until = self.clock() + backoff
        replica.down.set()

    def record_probe(self, replica: Replica, status: str) -> None:
        if status == "UNREACHABLE" and replica.status == "SERVING" and replica.consecutive_failures == 0:
            # Tolerated only while its steps succeed: after a failed step, silence is believed at once.
            replica.missed_probes += 1
            if replica.missed_probes < self.missed_probes_to_down:
                return
        else:
            replica.missed_probes = 0
        replica.status = status
        if status != "SERVING":
            replica.down.set()
        elif self.clock() >= replica.open_until:
            replica.down.clear()

    def due_for_probe(self, replica: Replica) -> bool:
        """An open circuit is re-probed only once its backoff has passed."""
        return self.clock() >= replica.open_until
