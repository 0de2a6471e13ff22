"""The partition node over real gRPC: status codes a coordinator relies on."""

from __future__ import annotations

import grpc
import pytest
import torch

from splitgpt.core.linear_kernels import onednn_available
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


def step(hidden: common_pb2.Tensor, *seqs: tuple[str, int, int]) -> node_pb2.StepRequest:
    return node_pb2.StepRequest(
        sequences=[node_pb2.SequenceStep(session_id=sid, position=pos, length=n) for sid, pos, n in seqs], hidden=hidden
    )


async def embed(stub, ids: list[int], position: int = 0) -> common_pb2.Tensor:
    reply = await stub.Embed(node_pb2.EmbedRequest(items=[node_pb2.EmbedItem(token_ids=ids, position=position)]))
    return reply.hidden[0]


async def test_info_health_and_a_packed_batch_step(nodes):
    (first, last), channels = nodes
    assert await probe_health(channels[0]) == "SERVING"
    info0, info1 = await first.Info(node_pb2.NodeInfoRequest()), await last.Info(node_pb2.NodeInfoRequest())
    assert (info0.start_block, info0.end_block, info0.holds_embedding) == (0, 2, False)
    assert (info1.start_block, info1.end_block, info1.holds_head) == (2, 4, True)
    assert info0.parameter_bytes < info1.parameter_bytes and info1.resident_bytes > 0
    # float32 with oneDNN, a copy far below 1 GiB: "auto" holds the decode copy, and says so.
    copy = 2 * 12 * 64 * 64 * 4 if onednn_available(torch.device("cpu"), torch.float32) else 0
    assert (info0.decode_copy, info0.weight_bytes) == (copy > 0, info0.parameter_bytes + copy)

    a, b = await embed(last, [15496, 11]), await embed(last, [464, 2068, 7586])
    assert list(a.shape) == [2, 64] and a.dtype == "float32"
    packed = tensor_to_proto(torch.cat([tensor_from_proto(a), tensor_from_proto(b)]))
    mid = (await first.Step(step(packed, ("a", 0, 2), ("b", 0, 3)))).hidden
    assert list(mid.shape) == [5, 64]
    out = await last.Step(step(mid, ("a", 0, 2), ("b", 0, 3)))
    assert [r.session_id for r in out.results] == ["a", "b"]
    assert all(0 <= r.token_id < 50257 and r.logprob <= 0 for r in out.results)
    assert list(out.next_input.shape) == [2, 64]
    # The next step continues each session where it is: a at 2, b at 3.
    mid = (await first.Step(step(out.next_input, ("a", 2, 1), ("b", 3, 1)))).hidden
    assert len((await last.Step(step(mid, ("a", 2, 1), ("b", 3, 1)))).results) == 2


async def test_a_step_the_cache_does_not_hold_is_failed_precondition(nodes):
    (first, _), _ = nodes
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await first.Step(step(tensor_to_proto(torch.zeros(1, 64)), ("unknown", 7, 1)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "unknown" in err.value.details()


@pytest.mark.parametrize(
    "hidden,length",
    [
        (common_pb2.Tensor(data=b"\0" * 12, dtype="float32", shape=[1, 64]), 1),  # wrong byte count
        (tensor_to_proto(torch.zeros(1, 65)), 1),  # wrong width
        (tensor_to_proto(torch.zeros(2, 64)), 1),  # rows do not match the lengths
        (common_pb2.Tensor(data=b"", dtype="int8", shape=[0]), 1),  # unknown dtype
        (tensor_to_proto(torch.zeros(0, 64)), 0),  # an empty sequence
    ],
)
async def test_malformed_steps_are_invalid_argument(nodes, hidden, length):
    (first, _), _ = nodes
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await first.Step(step(hidden, ("m", 0, length)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_embed_is_only_on_the_last_partition_and_checks_ids(nodes):
    (first, last), _ = nodes
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await embed(first, [1])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await embed(last, [60000])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_release_frees_the_session(nodes):
    (first, last), _ = nodes
    await first.Step(step(await embed(last, [1, 2, 3]), ("r", 0, 3)))
    assert (await first.Info(node_pb2.NodeInfoRequest())).cached_tokens == 3
    assert (await first.Release(node_pb2.ReleaseRequest(session_ids=["r"]))).released == 1
    assert (await first.Info(node_pb2.NodeInfoRequest())).cached_sessions == 0


async def test_bfloat16_node_sends_bfloat16_hidden_states(tiny_checkpoint):
    server = await start(NodeSettings(model_id=str(tiny_checkpoint), partition=1, num_partitions=2, port=0, dtype="bfloat16"))
    async with insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = node_pb2_grpc.PartitionNodeStub(channel)
        h = await embed(stub, [1, 2])
        assert h.dtype == "bfloat16" and tensor_from_proto(h).dtype == torch.bfloat16
        out = await stub.Step(step(h, ("b", 0, 2)))
        assert out.next_input.dtype == "bfloat16"
    await server.stop(0)
