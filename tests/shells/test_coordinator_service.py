"""The coordinator servicer over real gRPC: a coordinator server on a free port
driving real partition node servers (the tiny checkpoint), called through the
generated stubs as the gateway calls it."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import torch

from splitgpt.core.cluster_config import ClusterConfig, NodeEntry
from splitgpt.rpc import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
)
from splitgpt.shells.coordinator_service import CoordinatorSettings
from splitgpt.shells.coordinator_service import start as start_coordinator
from splitgpt.shells.grpc_runtime import insecure_channel, probe_health
from splitgpt.shells.node_service import NodeSettings
from splitgpt.shells.node_service import start as start_node

PROMPT = [15496, 11, 616, 1438, 318]
# Partition 1 has two replicas: the cluster view must list both.
NODES = [("p0", 0), ("p1a", 1), ("p1b", 1), ("p2", 2)]


async def start_coordinator_over(tmp_path, nodes: list[NodeEntry]):
    config = tmp_path / "cluster.json"
    ClusterConfig(num_partitions=3, nodes=nodes).dump(config)
    settings = CoordinatorSettings(
        cluster_config=config, port=0, health_interval_s=0.1, probe_timeout_s=1.0, unavailable_grace_s=2.0,
        info_interval_s=0.2,
    )  # fmt: skip
    return await start_coordinator(settings)


@pytest.fixture
async def stack(tiny_checkpoint, tmp_path):
    """Four node servers and a coordinator over them, SERVING; yields its stub and the node servers."""
    nodes = {
        node_id: await start_node(
            NodeSettings(model_id=str(tiny_checkpoint), node_id=node_id, partition=p, num_partitions=3, port=0)
        )
        for node_id, p in NODES
    }
    entries = [NodeEntry(id=n, address=f"127.0.0.1:{nodes[n].port}", partition=p) for n, p in NODES]
    server, health = await start_coordinator_over(tmp_path, entries)
    channel = insecure_channel(f"127.0.0.1:{server.port}")
    deadline = time.monotonic() + 30
    while await probe_health(channel) != "SERVING":
        assert time.monotonic() < deadline, "the coordinator never became ready"
        await asyncio.sleep(0.05)
    yield coordinator_pb2_grpc.CoordinatorStub(channel), nodes
    await channel.close()
    health.cancel()
    await server.stop(0)
    for node in nodes.values():
        await node.stop(0)


def hf_greedy(hf_model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=50256, eos_token_id=None
        )
    return out[0, len(prompt) :].tolist()


def generate_request(request_id: str, prompt: list[int], max_tokens: int, **kw) -> coordinator_pb2.GenerateRequest:
    return coordinator_pb2.GenerateRequest(request_id=request_id, prompt_ids=prompt, max_tokens=max_tokens, ignore_eos=True, **kw)


async def test_generate_streams_hf_greedy_tokens_then_a_finish_event(stack, hf_model):
    coordinator, _ = stack
    events = [e async for e in coordinator.Generate(generate_request("g1", PROMPT, 12))]
    tokens, finish = events[:-1], events[-1]
    assert all(e.WhichOneof("event") == "token" for e in tokens) and finish.WhichOneof("event") == "finish"
    assert [e.token.token_id for e in tokens] == hf_greedy(hf_model, PROMPT, 12)
    assert [e.token.index for e in tokens] == list(range(12))
    assert all(e.token.logprob <= 0 for e in tokens)
    f = finish.finish
    assert (f.finish_reason, f.prompt_tokens, f.completion_tokens) == ("length", len(PROMPT), 12)
    assert [t.partition for t in f.partitions] == [0, 1, 2] and f.inference_ms > 0


async def test_model_info_and_the_cluster_lists_every_node(stack, tiny_checkpoint):
    coordinator, nodes = stack
    info = await coordinator.GetModelInfo(coordinator_pb2.ModelInfoRequest())
    assert (info.n_ctx, info.vocab_size, info.eos_token_id, info.n_layer, info.num_partitions) == (128, 50257, 50256, 4, 3)
    assert info.model_id == str(tiny_checkpoint)

    cluster = await coordinator.GetCluster(coordinator_pb2.ClusterRequest())
    by_id = {n.id: n for n in cluster.nodes}
    assert set(by_id) == {n for n, _ in NODES}
    for node_id, partition in NODES:
        n = by_id[node_id]
        assert (n.partition, n.status, n.circuit, n.address) == (
            partition,
            "SERVING",
            "closed",
            f"127.0.0.1:{nodes[node_id].port}",
        )
    # Blocks [0, 4) in three even partitions: [0, 2), [2, 3), [3, 4).
    assert [(by_id[n].start_block, by_id[n].end_block) for n in ("p0", "p1a", "p1b", "p2")] == [(0, 2), (2, 3), (2, 3), (3, 4)]
    # Each replica's weights as its own Info says them (the ends hold wte too), and a resident set.
    for node_id, _ in NODES:
        async with insecure_channel(f"127.0.0.1:{nodes[node_id].port}") as channel:
            own = await node_pb2_grpc.PartitionNodeStub(channel).Info(node_pb2.NodeInfoRequest())
        assert by_id[node_id].weight_bytes == own.weight_bytes >= own.parameter_bytes > 0
        assert by_id[node_id].resident_bytes > 0
    assert by_id["p2"].weight_bytes > by_id["p1a"].weight_bytes


async def test_the_cluster_reads_each_nodes_resident_memory_again(stack):
    """Resident memory moves (the KV cache grows): the coordinator reads it again
    every info_interval_s, not only when the node joined. The nodes here live in
    this test's process, so a quarter GiB this test touches is in their RSS."""
    coordinator, _ = stack

    async def resident() -> dict[str, int]:
        cluster = await coordinator.GetCluster(coordinator_pb2.ClusterRequest())
        return {n.id: n.resident_bytes for n in cluster.nodes}

    before = await resident()
    ballast = b"\x01" * (256 << 20)  # written, so resident
    deadline = time.monotonic() + 10
    while not all(after > before[n] + (200 << 20) for n, after in (await resident()).items()):
        assert time.monotonic() < deadline, (before, await resident())
        await asyncio.sleep(0.1)
    del ballast


async def test_a_node_that_stops_serving_shows_no_memory(stack):
    """A dead or draining process's last RSS is no news: 0 (unknown) until it serves again."""
    coordinator, nodes = stack
    await nodes["p1b"].stop(0)
    deadline = time.monotonic() + 10
    while True:
        by_id = {n.id: n for n in (await coordinator.GetCluster(coordinator_pb2.ClusterRequest())).nodes}
        if by_id["p1b"].status != "SERVING":
            break
        assert time.monotonic() < deadline, "the stopped node still shows SERVING"
        await asyncio.sleep(0.05)
    assert (by_id["p1b"].weight_bytes, by_id["p1b"].resident_bytes) == (0, 0)
    assert by_id["p1a"].weight_bytes > 0 and by_id["p1a"].resident_bytes > 0


async def test_list_and_cancel_a_running_task(stack):
    coordinator, _ = stack
    stream = coordinator.Generate(generate_request("long", PROMPT, 120))
    first = await stream.read()
    assert first.WhichOneof("event") == "token"
    tasks = (await coordinator.ListTasks(coordinator_pb2.ListTasksRequest())).tasks
    assert [t.request_id for t in tasks] == ["long"]
    assert tasks[0].prompt_tokens == len(PROMPT) and tasks[0].max_tokens == 120 and len(tasks[0].chain) == 3

    assert (await coordinator.CancelTask(coordinator_pb2.CancelTaskRequest(request_id="long"))).cancelled
    rest = []
    while (event := await stream.read()) is not grpc.aio.EOF:
        rest.append(event)
    assert rest[-1].finish.finish_reason == "cancelled" and rest[-1].finish.completion_tokens < 120
    assert not (await coordinator.CancelTask(coordinator_pb2.CancelTaskRequest(request_id="long"))).cancelled
    assert not (await coordinator.ListTasks(coordinator_pb2.ListTasksRequest())).tasks


async def test_a_client_that_goes_away_frees_every_node_cache(stack):
    """Cancelling the call ends the sequence at once, not when its 120 tokens would be done."""
    coordinator, nodes = stack
    call = coordinator.Generate(generate_request("gone", PROMPT, 120))
    assert (await call.read()).WhichOneof("event") == "token"
    started = time.perf_counter()
    for _ in range(3):
        assert (await call.read()).WhichOneof("event") == "token"
    per_token_s = (time.perf_counter() - started) / 3
    call.cancel()
    cancelled = time.perf_counter()
    channels = [insecure_channel(f"127.0.0.1:{n.port}") for n in nodes.values()]
    try:
        while True:
            infos = [await node_pb2_grpc.PartitionNodeStub(c).Info(node_pb2.NodeInfoRequest()) for c in channels]
            tasks = (await coordinator.ListTasks(coordinator_pb2.ListTasksRequest())).tasks
            if not tasks and not any(i.cached_sessions for i in infos):
                break
            assert time.perf_counter() - cancelled < 10, ([i.cached_sessions for i in infos], tasks)
            await asyncio.sleep(0.01)
    finally:
        for c in channels:
            await c.close()
    # The remaining 116 tokens would take 116 steps; freeing took a few.
    assert time.perf_counter() - cancelled < 116 * per_token_s / 2


@pytest.mark.parametrize(
    "prompt,max_tokens,message",
    [
        ([15496, 70000], 4, "outside the vocabulary"),
        ([], 4, "no tokens"),
        (PROMPT, 124, "exceeds the context"),  # 5 + 124 > 128
    ],
)
async def test_an_invalid_request_is_invalid_argument(stack, prompt, max_tokens, message):
    coordinator, _ = stack
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [e async for e in coordinator.Generate(generate_request("bad", prompt, max_tokens))]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


async def test_sampling_parameters_travel_to_the_last_partition(stack):
    """A seed makes sampling repeatable; two seeds (almost surely) differ."""
    coordinator, _ = stack

    async def sampled(request_id: str, seed: int) -> list[int]:
        sampling = common_pb2.SamplingParams(temperature=1.0, top_k=50, seed=seed)
        events = [e async for e in coordinator.Generate(generate_request(request_id, PROMPT, 16, sampling=sampling))]
        return [e.token.token_id for e in events[:-1]]

    a, b, c = await sampled("s1", 7), await sampled("s2", 7), await sampled("s3", 8)
    assert a == b and a != c


async def test_before_any_node_serves_generate_and_model_info_are_unavailable(tmp_path):
    # Nothing listens on these ports: the nodes are "still starting".
    entries = [NodeEntry(id=f"p{p}", address=f"127.0.0.1:{free_port()}", partition=p) for p in range(3)]
    server, health = await start_coordinator_over(tmp_path, entries)
    try:
        async with insecure_channel(f"127.0.0.1:{server.port}") as channel:
            coordinator = coordinator_pb2_grpc.CoordinatorStub(channel)
            assert await probe_health(channel) == "NOT_SERVING"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [e async for e in coordinator.Generate(generate_request("early", PROMPT, 4))]
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "starting" in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await coordinator.GetModelInfo(coordinator_pb2.ModelInfoRequest())
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            cluster = await coordinator.GetCluster(coordinator_pb2.ClusterRequest())
            assert sorted(n.id for n in cluster.nodes) == ["p0", "p1", "p2"]
            assert not (await coordinator.ListTasks(coordinator_pb2.ListTasksRequest())).tasks
    finally:
        health.cancel()
        await server.stop(0)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
