"""The coordinator's figures of each replica's memory (weights, resident set):
read from Info when the replica joins, again every info_interval_s and never
between, kept through one missed probe, dropped once the replica is down."""

from __future__ import annotations

from splitgpt.core.cluster_config import ClusterConfig, NodeEntry
from splitgpt.rpc import node_pb2
from splitgpt.shells import cluster_view
from splitgpt.shells.cluster_view import Cluster
from splitgpt.shells.coordinator_service import CoordinatorSettings


class FakeNode:
    """The node client's two calls the cluster view makes: a channel to probe, and Info."""

    channel = None

    def __init__(self) -> None:
        self.resident = 1000
        self.info_calls = 0
        self.fail = False

    async def info(self, timeout_s: float | None = None) -> node_pb2.NodeInfo:
        self.info_calls += 1
        if self.fail:
            raise ConnectionError("no answer")
        return node_pb2.NodeInfo(
            start_block=0, end_block=4, n_layer=4, num_partitions=1, vocab_size=50257, hidden_size=64,
            holds_head=True, parameter_bytes=100, weight_bytes=100, resident_bytes=self.resident,
        )  # fmt: skip

    async def close(self) -> None:
        pass


async def test_memory_is_read_at_join_then_every_interval_and_dropped_when_down(monkeypatch):
    health = ["SERVING"]

    async def probe(channel, timeout_s):
        return health[0]

    monkeypatch.setattr(cluster_view, "probe_health", probe)
    config = ClusterConfig(num_partitions=1, nodes=[NodeEntry(id="n", address="127.0.0.1:1", partition=0)])
    cluster = Cluster(config, CoordinatorSettings(info_interval_s=5.0))
    now = [100.0]
    cluster._clock = lambda: now[0]
    await cluster.refresh_replicas()
    await cluster.clients["n"].close()
    node = cluster.clients["n"] = FakeNode()
    [replica] = cluster.router.replicas

    def figures() -> tuple[int, int]:
        m = cluster.memory("n")
        return m.weight_bytes, m.resident_bytes

    assert figures() == (0, 0)  # not known before it has said
    await cluster._probe(replica)
    assert replica.status == "SERVING" and figures() == (100, 1000) and node.info_calls == 1

    node.resident = 2000  # its KV cache grew
    now[0] += 4.9
    await cluster._probe(replica)
    assert figures() == (100, 1000) and node.info_calls == 1  # not yet due: a probe alone
    now[0] += 0.1
    await cluster._probe(replica)
    assert figures() == (100, 2000) and node.info_calls == 2

    node.fail = True  # an Info that fails keeps the last figures and is not retried at once
    now[0] += 5
    await cluster._probe(replica)
    await cluster._probe(replica)
    assert figures() == (100, 2000) and node.info_calls == 3 and replica.status == "SERVING"

    health[0] = "UNREACHABLE"  # one missed probe: still SERVING, so still its figures
    await cluster._probe(replica)
    assert replica.status == "SERVING" and figures() == (100, 2000)
    await cluster._probe(replica)  # the second: down, and a dead process's RSS is no news
    assert replica.status == "UNREACHABLE" and figures() == (0, 0)

    health[0], node.fail = "SERVING", False  # back: read again when it rejoins
    await cluster._probe(replica)
    assert replica.status == "SERVING" and figures() == (100, 2000)
    await cluster.close()
