"""The internal token: every gRPC service refuses calls without it, health stays open.

Real servers on free ports (a node, the tokenizer, a coordinator over nodes),
called through the generated stubs with no token, a wrong one, and the right one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from pathlib import Path

import grpc
import pytest

from splitgpt.core.cluster_config import ClusterConfig, NodeEntry
from splitgpt.rpc import coordinator_pb2, coordinator_pb2_grpc, node_pb2, node_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc
from splitgpt.shells.coordinator_service import CoordinatorSettings
from splitgpt.shells.coordinator_service import start as start_coordinator
from splitgpt.shells.grpc_runtime import GrpcServer, client_channel, insecure_channel, probe_health
from splitgpt.shells.internal_auth import InternalSecurity, InternalSecurityError
from splitgpt.shells.node_service import NodeSettings
from splitgpt.shells.node_service import start as start_node
from splitgpt.shells.tokenizer_service import TokenizerSettings
from splitgpt.shells.tokenizer_service import start as start_tokenizer

TOKEN = "test-token-0123456789abcdef"
WRONG = "test-token-0123456789abcdeX"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def channels(address: str) -> dict[str, grpc.aio.Channel]:
    """One channel with no token, one with a wrong token, one with the right one."""
    return {
        "none": insecure_channel(address),
        "wrong": client_channel(address, InternalSecurity(token=WRONG)),
        "right": client_channel(address, InternalSecurity(token=TOKEN)),
    }


async def close(chs: dict[str, grpc.aio.Channel]) -> None:
    for c in chs.values():
        await c.close()


async def refused(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    assert exc.value.code() == UNAUTHENTICATED, exc.value
    return exc.value.details()


@pytest.fixture
async def node(tiny_checkpoint):
    server = await start_node(
        NodeSettings(model_id=str(tiny_checkpoint), node_id="n0", partition=0, num_partitions=1, port=0, internal_token=TOKEN)
    )
    chs = channels(f"127.0.0.1:{server.port}")
    yield chs
    await close(chs)
    await server.stop(0)


async def test_a_node_refuses_calls_without_the_token_and_serves_those_with_it(node):
    stubs = {k: node_pb2_grpc.PartitionNodeStub(c) for k, c in node.items()}
    assert "missing" in await refused(stubs["none"].Info(node_pb2.NodeInfoRequest()))
    assert "wrong" in await refused(stubs["wrong"].Info(node_pb2.NodeInfoRequest()))
    # A refused call is refused before its request is parsed: even bytes that are no message.
    assert await refused(stubs["none"].Step(node_pb2.StepRequest()))
    embed = node_pb2.EmbedRequest(items=[node_pb2.EmbedItem(token_ids=[15496, 11], position=0)])
    await refused(stubs["wrong"].Embed(embed))
    assert (await stubs["right"].Info(node_pb2.NodeInfoRequest())).node_id == "n0"
    reply = await stubs["right"].Embed(embed)
    assert list(reply.hidden[0].shape) == [2, 64]


async def test_health_stays_open_without_a_token(node):
    for ch in node.values():
        assert await probe_health(ch) == "SERVING"


async def test_the_tokenizer_refuses_untokened_calls_unary_and_streaming(tiny_checkpoint):
    server = await start_tokenizer(TokenizerSettings(model_id=str(tiny_checkpoint), port=0, internal_token=TOKEN))
    chs = channels(f"127.0.0.1:{server.port}")
    try:
        stubs = {k: tokenizer_pb2_grpc.TokenizerStub(c) for k, c in chs.items()}
        for who in ("none", "wrong"):
            await refused(stubs[who].Encode(tokenizer_pb2.EncodeRequest(text="hi")))
            stream = stubs[who].DecodeStream()
            with pytest.raises(grpc.aio.AioRpcError) as exc:  # the refusal can come before the write is taken
                await stream.write(tokenizer_pb2.DecodeStreamRequest(ids=[15496]))
                await stream.read()
            assert exc.value.code() == UNAUTHENTICATED
        assert list((await stubs["right"].Encode(tokenizer_pb2.EncodeRequest(text="Hello"))).ids) == [15496]
        stream = stubs["right"].DecodeStream()  # a bidirectional stream through the client interceptor
        await stream.write(tokenizer_pb2.DecodeStreamRequest(ids=[15496]))
        assert (await stream.read()).text == "Hello"
        await stream.done_writing()
        assert await probe_health(chs["none"]) == "SERVING"
    finally:
        await close(chs)
        await server.stop(0)


async def wait_serving(channel, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await probe_health(channel) == "SERVING":
            return True
        await asyncio.sleep(0.05)
    return False


async def test_the_coordinator_needs_the_token_and_passes_it_to_the_nodes(tiny_checkpoint, tmp_path):
    nodes = [
        await start_node(NodeSettings(model_id=str(tiny_checkpoint), node_id=f"p{p}", partition=p, num_partitions=2,
                                      port=0, internal_token=TOKEN))
        for p in (0, 1)
    ]  # fmt: skip
    config = tmp_path / "cluster.json"
    ClusterConfig(num_partitions=2, nodes=[NodeEntry(id=f"p{p}", address=f"127.0.0.1:{n.port}", partition=p)
                                           for p, n in enumerate(nodes)]).dump(config)  # fmt: skip
    settings = CoordinatorSettings(cluster_config=config, port=0, health_interval_s=0.1, internal_token=TOKEN)
    server, health = await start_coordinator(settings)
    chs = channels(f"127.0.0.1:{server.port}")
    try:
        assert await wait_serving(chs["none"]), "the coordinator never reached its nodes with the token"
        stubs = {k: coordinator_pb2_grpc.CoordinatorStub(c) for k, c in chs.items()}
        request = coordinator_pb2.GenerateRequest(request_id="r", prompt_ids=[15496, 11], max_tokens=3)
        for who in ("none", "wrong"):
            await refused(stubs[who].GetModelInfo(coordinator_pb2.ModelInfoRequest()))
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                async for _ in stubs[who].Generate(request):
                    pass
            assert exc.value.code() == UNAUTHENTICATED
        events = [e async for e in stubs["right"].Generate(request)]
        assert [e.WhichOneof("event") for e in events] == ["token"] * 3 + ["finish"]
    finally:
        await close(chs)
        health.cancel()
        await server.stop(0)
        for n in nodes:
            await n.stop(0)


async def test_a_coordinator_without_the_token_never_gets_the_nodes(tiny_checkpoint, tmp_path):
    node = await start_node(
        NodeSettings(model_id=str(tiny_checkpoint), node_id="p0", partition=0, num_partitions=1, port=0, internal_token=TOKEN)
    )
    config = tmp_path / "cluster.json"
    ClusterConfig(num_partitions=1, nodes=[NodeEntry(id="p0", address=f"127.0.0.1:{node.port}", partition=0)]).dump(config)
    server, health = await start_coordinator(CoordinatorSettings(cluster_config=config, port=0, health_interval_s=0.1))
    try:
        async with insecure_channel(f"127.0.0.1:{server.port}") as ch:
            # The node's health answers SERVING, but its Info (the identity check) is refused.
            assert not await wait_serving(ch, timeout_s=2.0)
            cluster = await coordinator_pb2_grpc.CoordinatorStub(ch).GetCluster(coordinator_pb2.ClusterRequest())
            assert [n.status for n in cluster.nodes] == ["UNREACHABLE"]
    finally:
        health.cancel()
        await server.stop(0)
        await node.stop(0)


# -- settings ------------------------------------------------------------------


def test_the_token_comes_from_the_environment_or_a_file_and_never_shows(monkeypatch, tmp_path):
    monkeypatch.setenv("SPLITGPT_INTERNAL_TOKEN", TOKEN)
    settings = NodeSettings()
    assert InternalSecurity.from_settings(settings).token == TOKEN
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())
    assert TOKEN not in repr(InternalSecurity.from_settings(settings))
    monkeypatch.delenv("SPLITGPT_INTERNAL_TOKEN")
    (tmp_path / "token").write_text(TOKEN + "\n")
    monkeypatch.setenv("SPLITGPT_INTERNAL_TOKEN_FILE", str(tmp_path / "token"))
    for cls in (NodeSettings, TokenizerSettings, CoordinatorSettings):
        assert InternalSecurity.from_settings(cls()).token == TOKEN
    from splitgpt.api.settings import ApiSettings

    assert InternalSecurity.from_settings(ApiSettings()).token == TOKEN


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"internal_token": "short"}, "at least 16"),
        ({"internal_token": "has a space in it, long enough"}, "without spaces"),
        ({"internal_token": TOKEN, "internal_token_file": "/x"}, "not both"),
        ({"internal_token_file": "/nonexistent/token"}, "No such file"),
        ({"tls_cert": "/x"}, "go together"),
        ({"tls_client_cert": "/x", "tls_client_key": "/y"}, "needs SPLITGPT_TLS_CA"),
    ],
)
def test_settings_that_cannot_work_are_refused_at_start(fields, message):
    with pytest.raises(InternalSecurityError, match=message):
        InternalSecurity.from_settings(NodeSettings(**fields))


async def test_a_service_without_a_token_says_so_once_at_start(caplog):
    with caplog.at_level(logging.WARNING, logger="splitgpt.shells.grpc_runtime"):
        for security in (InternalSecurity(), InternalSecurity(token=TOKEN)):
            await GrpcServer("splitgpt.v1.Test", "127.0.0.1", 0, security).stop(0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no internal token" in warnings[0] and TOKEN not in caplog.text


# -- splitgpt up ---------------------------------------------------------------


def up_args(tmp_path, tls: bool = False) -> argparse.Namespace:
    from splitgpt.launcher import parse_args

    return parse_args(["--run-dir", str(tmp_path), "--partitions", "2"] + (["--tls"] if tls else []))


def test_up_gives_every_grpc_child_a_fresh_token_by_environment_only(tmp_path, monkeypatch):
    from splitgpt.launcher import inside_env, plan

    monkeypatch.delenv("SPLITGPT_INTERNAL_TOKEN", raising=False)
    monkeypatch.delenv("SPLITGPT_INTERNAL_TOKEN_FILE", raising=False)
    args = up_args(tmp_path)
    first, second = inside_env(args), inside_env(args)
    token = first["SPLITGPT_INTERNAL_TOKEN"]
    assert len(token) >= 32 and token != second["SPLITGPT_INTERNAL_TOKEN"]  # one per run
    children, _, _ = plan(args, tmp_path, first)
    for child in children:
        assert not any(token in a for a in child.argv), child.name
        if child.name == "ui":
            assert "SPLITGPT_INTERNAL_TOKEN" not in child.env
        else:
            assert child.env["SPLITGPT_INTERNAL_TOKEN"] == token, child.name
    # A token the environment already sets is the one every child gets.
    monkeypatch.setenv("SPLITGPT_INTERNAL_TOKEN", TOKEN)
    assert "SPLITGPT_INTERNAL_TOKEN" not in inside_env(args)


def test_up_tls_writes_a_throwaway_pki_and_wires_every_child(tmp_path, monkeypatch):
    from splitgpt.launcher import inside_env, plan

    args = up_args(tmp_path, tls=True)
    env = inside_env(args)
    for name in ("SPLITGPT_TLS_CERT", "SPLITGPT_TLS_KEY", "SPLITGPT_TLS_CA", "SPLITGPT_TLS_CLIENT_CA",
                 "SPLITGPT_TLS_CLIENT_CERT", "SPLITGPT_TLS_CLIENT_KEY"):  # fmt: skip
        assert Path(env[name]).parent == (tmp_path / "tls").resolve() and Path(env[name]).is_file(), name
    assert oct((tmp_path / "tls" / "server-key.pem").stat().st_mode & 0o777) == "0o600"
    children, _, _ = plan(args, tmp_path, env)
    assert all(c.env["SPLITGPT_TLS_CA"] == env["SPLITGPT_TLS_CA"] for c in children if c.name != "ui")
