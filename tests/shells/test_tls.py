"""TLS and mutual TLS on the gRPC hops, with certificates made here (shells.tls).

A real tokenizer server (the tiny checkpoint's vocabulary) serves TLS; clients
with the right CA and client certificate are served, a client certificate from
another CA, none at all, or plain text is refused. Nodes read each other's
sessions (a drain, node to node) over it. Last, the whole stack
(`splitgpt up --tls`) answers a generation over mutual TLS with the token.
"""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import httpx
import pytest
import torch

from splitgpt.rpc import node_pb2, node_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc
from splitgpt.shells.grpc_runtime import client_channel, insecure_channel, probe_health
from splitgpt.shells.internal_auth import InternalSecurity
from splitgpt.shells.tls import issue, make_ca, write_dev_pki
from splitgpt.shells.tokenizer_service import TokenizerSettings
from splitgpt.shells.tokenizer_service import start as start_tokenizer

TOKEN = "tls-test-token-0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return write_dev_pki(tmp_path_factory.mktemp("pki"), ["127.0.0.1"])


@pytest.fixture(scope="module")
def other_ca_client():
    """A client certificate signed by a CA the servers do not trust."""
    ca = make_ca("some other CA")
    return issue(ca, "intruder", client=True)


def client(pki, cert: bool = True, **overrides) -> InternalSecurity:
    fields = {
        "token": TOKEN,
        "ca": pki.ca.read_bytes(),
        "client_cert": pki.client_cert.read_bytes() if cert else None,
        "client_key": pki.client_key.read_bytes() if cert else None,
    }
    return InternalSecurity(**{**fields, **overrides})


async def tokenizer(tiny_checkpoint, pki, mutual: bool = True):
    settings = TokenizerSettings(
        model_id=str(tiny_checkpoint), port=0, internal_token=TOKEN, tls_cert=pki.server_cert, tls_key=pki.server_key,
        tls_client_ca=pki.ca if mutual else None,
    )  # fmt: skip
    return await start_tokenizer(settings)


async def encode(channel: grpc.aio.Channel) -> list[int]:
    reply = await tokenizer_pb2_grpc.TokenizerStub(channel).Encode(tokenizer_pb2.EncodeRequest(text="Hello"), timeout=5)
    return list(reply.ids)


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await encode(channel)
    return exc.value.code()


async def test_mutual_tls_serves_a_client_of_its_ca_and_refuses_any_other(tiny_checkpoint, pki, other_ca_client):
    server = await tokenizer(tiny_checkpoint, pki)
    address = f"127.0.0.1:{server.port}"
    try:
        async with client_channel(address, client(pki)) as ch:
            assert await encode(ch) == [15496]
            assert await probe_health(ch) == "SERVING"
        # The right certificate, but no token: TLS is not a substitute for it.
        async with client_channel(address, client(pki, token=None)) as ch:
            assert await refused(ch) == grpc.StatusCode.UNAUTHENTICATED
        # No client certificate; one from another CA; plain text: no connection at all.
        no_cert = client(pki, cert=False)
        intruder = client(pki, client_cert=other_ca_client.cert_pem, client_key=other_ca_client.key_pem)
        for security in (no_cert, intruder):
            async with client_channel(address, security) as ch:
                assert await refused(ch) == grpc.StatusCode.UNAVAILABLE
                assert await probe_health(ch) == "UNREACHABLE"
        async with insecure_channel(address) as ch:
            assert await refused(ch) == grpc.StatusCode.UNAVAILABLE
            assert await probe_health(ch) == "UNREACHABLE"
    finally:
        await server.stop(0)


async def test_a_server_certificate_from_another_ca_is_not_trusted(tiny_checkpoint, pki):
    server = await tokenizer(tiny_checkpoint, pki, mutual=False)
    address = f"127.0.0.1:{server.port}"
    try:
        async with client_channel(address, client(pki, cert=False)) as ch:  # TLS without client certs
            assert await encode(ch) == [15496]
        stranger = make_ca("a CA that signed nothing here")
        async with client_channel(address, client(pki, cert=False, ca=stranger.cert_pem)) as ch:
            assert await refused(ch) == grpc.StatusCode.UNAVAILABLE
        # A name the certificate does not carry fails; one it carries, given explicitly, works.
        async with client_channel(address, client(pki, cert=False, server_name="node.example")) as ch:
            assert await refused(ch) == grpc.StatusCode.UNAVAILABLE
        async with client_channel(address, client(pki, cert=False, server_name="localhost")) as ch:
            assert await encode(ch) == [15496]
    finally:
        await server.stop(0)


def probe(address: str, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPLITGPT_TLS_")}
    return subprocess.run(
        [sys.executable, "-m", "splitgpt.cli", "probe", address, *flags],
        capture_output=True, text=True, timeout=60, env={**base, **(env or {})},
    )  # fmt: skip


async def test_splitgpt_probe_works_over_mutual_tls_by_flags_or_environment(tiny_checkpoint, pki):
    import asyncio

    server = await tokenizer(tiny_checkpoint, pki)
    address = f"127.0.0.1:{server.port}"
    try:
        flags = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
        env = {"SPLITGPT_TLS_CA": str(pki.ca), "SPLITGPT_TLS_CLIENT_CERT": str(pki.client_cert),
               "SPLITGPT_TLS_CLIENT_KEY": str(pki.client_key)}  # fmt: skip
        by_flags, by_env, plain = await asyncio.gather(
            asyncio.to_thread(probe, address, *flags),
            asyncio.to_thread(probe, address, env=env),
            asyncio.to_thread(probe, address),
        )
        assert by_flags.returncode == 0 and "SERVING" in by_flags.stdout, by_flags.stderr
        assert by_env.returncode == 0, by_env.stderr
        assert plain.returncode == 1 and "UNREACHABLE" in plain.stdout
    finally:
        await server.stop(0)


async def test_a_node_pulls_a_session_from_its_peer_over_mutual_tls_and_one_without_a_client_cert_cannot(tiny_checkpoint, pki):
    """Live migration node to node (shells.session_pull) under mTLS and the token: a node
    with the calling side set reads its peer's session exactly; one without a client
    certificate cannot connect, which is ABORTED (SessionSourceFailed), and the
    coordinator would carry that session itself."""
    from splitgpt.core.node_contract import SequenceStep, SessionSourceFailed, StepBatch
    from splitgpt.shells.node_client import GrpcNodeClient
    from splitgpt.shells.node_service import NodeSettings
    from splitgpt.shells.node_service import start as start_node

    def node(node_id: str, calls_peers: bool) -> NodeSettings:
        calling = {"tls_ca": pki.ca, "tls_client_cert": pki.client_cert, "tls_client_key": pki.client_key}
        return NodeSettings(
            model_id=str(tiny_checkpoint), node_id=node_id, partition=0, num_partitions=1, port=0, kv_max_tokens=1024,
            internal_token=TOKEN, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca,
            **(calling if calls_peers else {}),
        )  # fmt: skip

    servers = {i: await start_node(node(i, calls_peers=i != "lone")) for i in ("a", "b", "lone")}
    clients = {i: GrpcNodeClient(f"127.0.0.1:{s.port}", timeout_s=10, security=client(pki)) for i, s in servers.items()}
    try:
        a, b = clients["a"], clients["b"]
        hidden = (await a.embed([([15496, 11, 616], 0)]))[0]
        first = await a.step(StepBatch([SequenceStep("t", 0, 3)], hidden))
        assert await b.pull_session("t", a.address) == 3
        step = StepBatch([SequenceStep("t", 3, 1)], first.next_input)
        on_a, on_b = await a.step(step), await b.step(step)
        assert on_a.token_ids == on_b.token_ids and torch.equal(on_a.next_input, on_b.next_input)
        with pytest.raises(SessionSourceFailed):
            await clients["lone"].pull_session("t", a.address)
    finally:
        for c in clients.values():
            await c.close()
        for server in servers.values():
            await server.stop(0)


@pytest.mark.system
def test_the_stack_serves_a_generation_over_mutual_tls_with_the_token(tiny_checkpoint, tmp_path):
    import asyncio

    from splitgpt.bench.local_stack import Stack

    stack = Stack(tiny_checkpoint, tmp_path, partitions=2, tls=True)
    try:
        stack.wait_ready(120)
        r = httpx.post(f"{stack.url}/api/model/process", json={"text": "Hello", "max_tokens": 4, "ignore_eos": True}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 4

        async def node_calls():
            address = stack.node_address(0)
            async with client_channel(address, stack.security()) as ch:  # the client certificate and the token
                info = await node_pb2_grpc.PartitionNodeStub(ch).Info(node_pb2.NodeInfoRequest(), timeout=5)
            async with insecure_channel(address) as ch:  # plain text: no connection
                plain = await probe_health(ch)
            async with client_channel(address, InternalSecurity(ca=stack.security().ca)) as ch:  # TLS, no client cert
                no_cert = await probe_health(ch)
            return info.node_id, plain, no_cert

        assert asyncio.run(node_calls()) == ("part0-r0", "UNREACHABLE", "UNREACHABLE")
    finally:
        assert stack.stop() == 0, stack.log_path.read_text()[-3000:]
    log = stack.log_path.read_text()
    assert stack.internal_token not in log
    assert "mutual TLS, token required" in log and "no internal token" not in log
