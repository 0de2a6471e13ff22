"""A node address whose name resolves to several addresses is that many replicas."""

from __future__ import annotations

import socket

from splitgpt.shells.cluster_view import expand_address


async def test_literal_address_is_one_replica():
    assert await expand_address("n", "127.0.0.1:50100") == [("n", "127.0.0.1:50100")]


async def test_a_name_with_several_addresses_expands(monkeypatch):
    async def fake_getaddrinfo(self, host, port, **kw):
        assert host == "splitgpt-node-1" and port == 50100
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("10.0.0.7", "10.0.0.5", "10.0.0.7")]

    monkeypatch.setattr("asyncio.base_events.BaseEventLoop.getaddrinfo", fake_getaddrinfo)
    assert await expand_address("node-1", "splitgpt-node-1:50100") == [
        ("node-1@10.0.0.5", "10.0.0.5:50100"),
        ("node-1@10.0.0.7", "10.0.0.7:50100"),
    ]


async def test_localhost_resolves_through_the_real_resolver():
    expanded = await expand_address("n", "localhost:50100")
    assert expanded and all(addr.endswith(":50100") for _, addr in expanded)


async def test_an_unresolvable_name_stays_one_replica_to_be_reported(monkeypatch):
    async def no_answer(self, host, port, **kw):  # no real DNS query leaves this machine
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr("asyncio.base_events.BaseEventLoop.getaddrinfo", no_answer)
    assert await expand_address("n", "node-9:1") == [("n", "node-9:1")]


async def test_scaling_out_and_losing_a_replica_never_counts_one_node_twice(monkeypatch):
    """Compose `--scale node-1=2` after a start with one: the replica first known by the
    bare name is one of the two addresses and goes; when one replica dies and leaves
    DNS, the survivor keeps its id and the dead one stays listed (its probes say down)."""
    from splitgpt.core.cluster_config import ClusterConfig, NodeEntry
    from splitgpt.shells.cluster_view import Cluster
    from splitgpt.shells.coordinator_service import CoordinatorSettings

    answers = [["10.0.0.5"], ["10.0.0.5", "10.0.0.7"], ["10.0.0.7"]]

    async def resolver(self, host, port, **kw):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[0]]

    monkeypatch.setattr("asyncio.base_events.BaseEventLoop.getaddrinfo", resolver)
    config = ClusterConfig(num_partitions=1, nodes=[NodeEntry(id="node-1", address="node-1:50100", partition=0)])
    cluster = Cluster(config, CoordinatorSettings())
    try:
        await cluster.refresh_replicas()
        assert [(r.node_id, r.address) for r in cluster.router.replicas] == [("node-1", "node-1:50100")]
        plain = cluster.router.replicas[0]

        answers.pop(0)
        await cluster.refresh_replicas()
        assert [r.node_id for r in cluster.router.replicas] == ["node-1@10.0.0.5", "node-1@10.0.0.7"]
        assert plain.down.is_set() and not cluster.router.usable(plain)  # sequences on it move
        assert "node-1" in cluster.clients  # kept for the releases still to come

        answers.pop(0)
        await cluster.refresh_replicas()
        assert [r.node_id for r in cluster.router.replicas] == ["node-1@10.0.0.5", "node-1@10.0.0.7"]
    finally:
        await cluster.close()


async def test_a_replica_gone_from_dns_and_down_is_retired_after_the_grace_and_a_dns_outage_changes_nothing(monkeypatch):
    """A pod replaced with a new address (Kubernetes) or a container scaled away leaves a
    dead entry: after GONE_FROM_DNS_GRACE_S it goes, or a replica alert would fire forever.
    One still SERVING stays; a name that stops resolving keeps what is known."""
    from splitgpt.core.cluster_config import ClusterConfig, NodeEntry
    from splitgpt.shells.cluster_view import GONE_FROM_DNS_GRACE_S, Cluster
    from splitgpt.shells.coordinator_service import CoordinatorSettings

    answer: list[str] | None = ["10.0.0.5", "10.0.0.7"]

    async def resolver(self, host, port, **kw):
        if answer is None:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answer]

    monkeypatch.setattr("asyncio.base_events.BaseEventLoop.getaddrinfo", resolver)
    now = [1000.0]
    cluster = Cluster(
        ClusterConfig(num_partitions=1, nodes=[NodeEntry(id="n", address="n:1", partition=0)]), CoordinatorSettings()
    )
    cluster._clock = lambda: now[0]
    ids = lambda: [r.node_id for r in cluster.router.replicas]  # noqa: E731
    try:
        await cluster.refresh_replicas()
        for replica in cluster.router.replicas:
            replica.status = "SERVING"
        answer = None  # DNS out: nothing added, nothing dropped
        await cluster.refresh_replicas()
        assert ids() == ["n@10.0.0.5", "n@10.0.0.7"]

        answer = ["10.0.0.7", "10.0.0.9"]  # .5 replaced by .9
        await cluster.refresh_replicas()
        assert ids() == ["n@10.0.0.5", "n@10.0.0.7", "n@10.0.0.9"]
        now[0] += GONE_FROM_DNS_GRACE_S + 1
        await cluster.refresh_replicas()
        assert ids() == ["n@10.0.0.5", "n@10.0.0.7", "n@10.0.0.9"]  # still SERVING: kept
        cluster.router.replicas[0].status = "UNREACHABLE"
        await cluster.refresh_replicas()
        assert ids() == ["n@10.0.0.7", "n@10.0.0.9"]
    finally:
        await cluster.close()
