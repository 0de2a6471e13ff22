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
