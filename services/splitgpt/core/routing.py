"""Replicas of each partition, their health, and the choice of a chain."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


class NoHealthyReplica(Exception):
    def __init__(self, partition: int) -> None:
        self.partition = partition
        super().__init__(f"partition {partition} has no SERVING node")


@dataclass(eq=False)  # identity: a replica is a live thing, not a value
class Replica:
    node_id: str
    address: str
    partition: int
    status: str = "UNKNOWN"  # grpc.health.v1 status, UNREACHABLE, or MISCONFIGURED
    in_flight: int = 0
    layers: tuple[int, int] | None = None  # [start, end) as the node reports it

    @property
    def healthy(self) -> bool:
        return self.status == "SERVING"


@dataclass
class Router:
    """Picks one SERVING replica per partition for a new sequence (round robin)."""

    num_partitions: int
    replicas: list[Replica] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._turn = [itertools.count() for _ in range(self.num_partitions)]

    def of_partition(self, partition: int) -> list[Replica]:
        return [r for r in self.replicas if r.partition == partition]

    def pick(self, partition: int) -> Replica:
        healthy = [r for r in self.of_partition(partition) if r.healthy]
        if not healthy:
            raise NoHealthyReplica(partition)
        return healthy[next(self._turn[partition]) % len(healthy)]

    def chain(self) -> list[Replica]:
        return [self.pick(p) for p in range(self.num_partitions)]

    def ready(self) -> bool:
        return all(any(r.healthy for r in self.of_partition(p)) for p in range(self.num_partitions))
