"""GrpcNodeClient against real node servers: the contract's types over the wire,
and each node status back as the contract's exception (error_mapping.error_from_status)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from splitgpt.core.node_contract import (
    CacheMiss,
    NodeFailed,
    SequenceStep,
    StepBatch,
    StepInputError,
)
from splitgpt.rpc import node_pb2_grpc
from splitgpt.shells.grpc_runtime import GrpcServer
from splitgpt.shells.node_client import GrpcNodeClient
from splitgpt.shells.node_service import (
    NodeSettings,
    PartitionNodeServicer,
    load_engine,
    start,
)


def settings(checkpoint, partition: int) -> NodeSettings:
    return NodeSettings(model_id=str(checkpoint), node_id=f"n{partition}", partition=partition, num_partitions=2, port=0)


@pytest.fixture
async def clients(tiny_checkpoint):
    """Clients of partition 0 and the last partition of a 2-way split."""
    servers = [await start(settings(tiny_checkpoint, p)) for p in (0, 1)]
    clients = [GrpcNodeClient(f"127.0.0.1:{s.port}", timeout_s=10) for s in servers]
    yield clients
    for c in clients:
        await c.close()
    for s in servers:
        await s.stop(0)


async def test_embed_and_steps_equal_the_node_engines_in_process(clients, tiny_checkpoint):
    first, last = clients
    engines = [load_engine(settings(tiny_checkpoint, p)) for p in (0, 1)]
    prompts = [[15496, 11, 616], [464, 2068]]
    hidden = await last.embed([(p, 0) for p in prompts])
    for h, p in zip(hidden, prompts, strict=True):
        torch.testing.assert_close(h, engines[1].embed([(p, 0)])[0], rtol=0, atol=0)

    batch = StepBatch([SequenceStep("a", 0, 3), SequenceStep("b", 0, 2)], torch.cat(hidden), concurrent_steps=2)
    mid = await first.step(batch)
    local_mid = engines[0].step(batch)
    torch.testing.assert_close(mid.hidden, local_mid.hidden)
    assert mid.token_ids == [] and mid.next_input is None

    out = await last.step(StepBatch(batch.sequences, mid.hidden))
    local_out = engines[1].step(StepBatch(batch.sequences, local_mid.hidden))
    assert out.token_ids == local_out.token_ids and out.hidden is None
    assert out.logprobs == pytest.approx(local_out.logprobs, abs=1e-4)
    torch.testing.assert_close(out.next_input, local_out.next_input)


async def test_an_unknown_session_is_a_cache_miss(clients):
    first, _ = clients
    with pytest.raises(CacheMiss, match="ghost"):
        await first.step(StepBatch([SequenceStep("ghost", 7, 1)], torch.zeros(1, 64)))


async def test_a_malformed_step_is_a_step_input_error_not_a_node_failure(clients):
    first, _ = clients
    with pytest.raises(StepInputError, match=r"\[1, 64\]"):
        await first.step(StepBatch([SequenceStep("m", 0, 1)], torch.zeros(1, 65)))


async def test_a_node_that_is_gone_or_still_loading_has_failed(tiny_checkpoint):
    server = await start(settings(tiny_checkpoint, 0))
    client = GrpcNodeClient(f"127.0.0.1:{server.port}", timeout_s=5)
    await server.stop(0)
    with pytest.raises(NodeFailed, match="UNAVAILABLE"):
        await client.release(["x"])
    await client.close()

    # Bound but not loaded: the servicer answers, the engine is not there yet.
    loading = GrpcServer("splitgpt.v1.PartitionNode", "127.0.0.1", 0)
    with ThreadPoolExecutor(1) as executor:
        loading.add(
            node_pb2_grpc.add_PartitionNodeServicer_to_server, PartitionNodeServicer(settings(tiny_checkpoint, 0), executor)
        )
        await loading.start()
        client = GrpcNodeClient(f"127.0.0.1:{loading.port}", timeout_s=5)
        for call in (client.info(), client.step(StepBatch([SequenceStep("x", 0, 1)], torch.zeros(1, 64))), client.release(["x"])):
            with pytest.raises(NodeFailed, match="UNAVAILABLE: n0 is still loading its weights"):
                await call
        await client.close()
        await loading.stop(0)


async def test_steps_share_one_stream_and_a_failed_step_leaves_it_open(clients, tiny_checkpoint):
    """Steps travel on one long-lived StepStream: replies find their own step
    when several are in flight, and a step's own failure (a cache miss) is that
    step's exception, not the end of the stream."""

    first, _ = clients
    engine = load_engine(settings(tiny_checkpoint, 0))
    batches = [StepBatch([SequenceStep(sid, 0, n)], torch.randn(n, 64)) for sid, n in (("p", 3), ("q", 1), ("r", 2))]
    results = await asyncio.gather(*(first.step(b) for b in batches))
    for batch, result in zip(batches, results, strict=True):
        torch.testing.assert_close(result.hidden, engine.step(batch).hidden)
    stream = first.steps._call
    with pytest.raises(CacheMiss):
        await first.step(StepBatch([SequenceStep("ghost", 5, 1)], torch.zeros(1, 64)))
    after = await first.step(StepBatch([SequenceStep("p", 3, 1)], torch.zeros(1, 64)))
    assert after.hidden.shape == (1, 64)
    assert first.steps._call is stream  # the same stream throughout


async def test_a_node_restarted_on_its_port_is_reached_by_a_new_stream(tiny_checkpoint):
    server = await start(settings(tiny_checkpoint, 0))
    port = server.port
    client = GrpcNodeClient(f"127.0.0.1:{port}", timeout_s=5)
    step = StepBatch([SequenceStep("s", 0, 1)], torch.zeros(1, 64))
    await client.step(step)
    await server.stop(0)
    with pytest.raises(NodeFailed):
        await client.step(step)
    restarted = await start(settings(tiny_checkpoint, 0).model_copy(update={"port": port}))
    try:
        for _ in range(50):  # the channel reconnects within its 1 s backoff cap
            try:
                result = await client.step(step)
                break
            except NodeFailed:
                await asyncio.sleep(0.1)
        assert result.hidden.shape == (1, 64)
    finally:
        await client.close()
        await restarted.stop(0)
