"""The partition node over real gRPC: status codes a coordinator relies on."""

from __future__ import annotations

import grpc
import pytest
import torch

from splitgpt.rpc import common_pb2, node_pb2, node_pb2_grpc
from splitgpt.shells.convert import tensor_from_proto, tensor_to_proto
from splitgpt.shells.grpc_runtime import insecure_channel, probe_health
from splitgpt.shells.node_service import NodeSettings, start


@pytest.fixture
async def nodes(tiny_checkpoint):
    """Partition 0 and the last partition of a 2-way split, on free ports."""
    servers = [
        await start(NodeSettings(model_id=str(tiny_checkpoint), node_id=f"n{p}", partition=p, num_partitions=2, port=0))
        for p in (0, 1)
    ]
    channels = [insecure_channel(f"127.0.0.1:{s.port}") for s in servers]
    yield [node_pb2_grpc.PartitionNodeStub(c) for c in channels], channels
    for c in channels:
        await c.close()
    for s in servers:
        await s.stop(0)


async def test_info_health_and_a_generation_step(nodes):
    (first, last), channels = nodes
    assert await probe_health(channels[0]) == "SERVING"
    info0, info1 = await first.Info(node_pb2.NodeInfoRequest()), await last.Info(node_pb2.NodeInfoRequest())
    assert (info0.start_block, info0.end_block, info0.holds_embedding) == (0, 2, False)
    assert (info1.start_block, info1.end_block, info1.holds_head) == (2, 4, True)
    assert info0.parameter_bytes < info1.parameter_bytes and info1.resident_bytes > 0

    embedded = await last.Embed(node_pb2.EmbedRequest(items=[node_pb2.EmbedItem(token_ids=[15496, 11], position=0)]))
    hidden = embedded.hidden[0]
    assert list(hidden.shape) == [2, 64] and hidden.dtype == "float32"
    step = lambda h, pos: node_pb2.StepRequest(  # noqa: E731
        sequences=[node_pb2.SequenceStep(session_id="s", position=pos, hidden=h, sampling=common_pb2.SamplingParams())]
    )
    mid = (await first.Step(step(hidden, 0))).results[0].hidden
    out = (await last.Step(step(mid, 0))).results[0]
    assert 0 <= out.token_id < 50257 and out.logprob <= 0
    assert list(out.next_input.shape) == [1, 64]
    # The next step continues the session at position 2.
    mid = (await first.Step(step(out.next_input, 2))).results[0].hidden
    assert (await last.Step(step(mid, 2))).results[0].HasField("next_input")


async def test_a_step_the_cache_does_not_hold_is_failed_precondition(nodes):
    (first, _), _ = nodes
    h = tensor_to_proto(torch.zeros(1, 64))
    req = node_pb2.StepRequest(sequences=[node_pb2.SequenceStep(session_id="unknown", position=7, hidden=h)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await first.Step(req)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "unknown" in err.value.details()


@pytest.mark.parametrize(
    "hidden",
    [
        common_pb2.Tensor(data=b"\0" * 12, dtype="float32", shape=[1, 64]),  # wrong byte count
        tensor_to_proto(torch.zeros(1, 65)),  # wrong width
        common_pb2.Tensor(data=b"", dtype="int8", shape=[0]),  # unknown dtype
    ],
)
async def test_malformed_hidden_states_are_invalid_argument(nodes, hidden):
    (first, _), _ = nodes
    req = node_pb2.StepRequest(sequences=[node_pb2.SequenceStep(session_id="m", position=0, hidden=hidden)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await first.Step(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_embed_is_only_on_the_last_partition_and_checks_ids(nodes):
    (first, last), _ = nodes
    item = node_pb2.EmbedItem(token_ids=[1], position=0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await first.Embed(node_pb2.EmbedRequest(items=[item]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await last.Embed(node_pb2.EmbedRequest(items=[node_pb2.EmbedItem(token_ids=[60000], position=0)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_release_frees_the_session(nodes):
    (first, last), _ = nodes
    h = (await last.Embed(node_pb2.EmbedRequest(items=[node_pb2.EmbedItem(token_ids=[1, 2, 3], position=0)]))).hidden[0]
    await first.Step(node_pb2.StepRequest(sequences=[node_pb2.SequenceStep(session_id="r", position=0, hidden=h)]))
    assert (await first.Info(node_pb2.NodeInfoRequest())).cached_tokens == 3
    assert (await first.Release(node_pb2.ReleaseRequest(session_ids=["r"]))).released == 1
    assert (await first.Info(node_pb2.NodeInfoRequest())).cached_sessions == 0


async def test_bfloat16_node_sends_bfloat16_hidden_states(tiny_checkpoint):
    server = await start(NodeSettings(model_id=str(tiny_checkpoint), partition=1, num_partitions=2, port=0, dtype="bfloat16"))
    async with insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = node_pb2_grpc.PartitionNodeStub(channel)
        h = (await stub.Embed(node_pb2.EmbedRequest(items=[node_pb2.EmbedItem(token_ids=[1, 2], position=0)]))).hidden[0]
        assert h.dtype == "bfloat16" and tensor_from_proto(h).dtype == torch.bfloat16
        out = await stub.Step(node_pb2.StepRequest(sequences=[node_pb2.SequenceStep(session_id="b", position=0, hidden=h)]))
        assert out.results[0].next_input.dtype == "bfloat16"
    await server.stop(0)
