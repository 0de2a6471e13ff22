"""Live migration over real gRPC: ExportSession from one node, ImportSession into a
replica of its partition (or PullSession, the replica reading the export itself),
and the session goes on there exactly; a stream that is not one session's whole
export is INVALID_ARGUMENT and changes nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import pytest_asyncio
import torch

from splitgpt.core.node_contract import (
    CacheMiss,
    SequenceStep,
    SessionSnapshot,
    SessionSourceFailed,
    StepBatch,
    StepInputError,
)
from splitgpt.rpc import common_pb2, node_pb2
from splitgpt.shells.convert import tensor_to_proto
from splitgpt.shells.node_client import GrpcNodeClient
from splitgpt.shells.node_service import NodeSettings, PartitionNodeServicer, load_engine, start
from splitgpt.shells.session_pull import CONNECT_TIMEOUT_S

PROMPT = [15496, 11, 616, 1438, 318]
N_CTX, KV_BUDGET = 128, 1024  # the tiny checkpoint's context; the nodes' budget
# Four nodes for the module: its tests share the module's event loop.
on_module_loop = pytest.mark.asyncio(loop_scope="module")


def settings(checkpoint, node_id: str, partition: int) -> NodeSettings:
    return NodeSettings(
        model_id=str(checkpoint), node_id=node_id, partition=partition, num_partitions=2, port=0, kv_max_tokens=KV_BUDGET
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def nodes(tiny_checkpoint):
    """Replicas a and b of each partition of a 2-way split (2 blocks each): clients by node id."""
    ids = {"a0": 0, "b0": 0, "a1": 1, "b1": 1}
    servers = {i: await start(settings(tiny_checkpoint, i, p)) for i, p in ids.items()}
    clients = {i: GrpcNodeClient(f"127.0.0.1:{s.port}", timeout_s=10) for i, s in servers.items()}
    yield clients
    for c in clients.values():
        await c.close()
    for s in servers.values():
        await s.stop(0)


async def generate(first: GrpcNodeClient, last: GrpcNodeClient, sid: str, decode_steps: int) -> tuple[int, torch.Tensor]:
    """A prefill and greedy decode steps through first -> last: the next position and its input."""
    hidden = (await last.embed([(PROMPT, 0)]))[0]
    position = 0
    for _ in range(decode_steps + 1):
        batch = StepBatch([SequenceStep(sid, position, hidden.shape[0])], hidden)
        mid = await first.step(batch)
        hidden = (await last.step(StepBatch(batch.sequences, mid.hidden))).next_input
        position += batch.sequences[0].length
    return position, hidden


async def export_chunks(client: GrpcNodeClient, sid: str) -> list[node_pb2.SessionChunk]:
    return [chunk async for chunk in client.stub.ExportSession(node_pb2.ExportSessionRequest(session_id=sid))]


async def through_the_caller(source: GrpcNodeClient, target: GrpcNodeClient, sid: str) -> int:
    snapshot = await source.export_session(sid)
    return await target.import_session(sid, snapshot)


async def node_to_node(source: GrpcNodeClient, target: GrpcNodeClient, sid: str) -> int:
    return await target.pull_session(sid, source.address)


@on_module_loop
@pytest.mark.parametrize("move", [through_the_caller, node_to_node])
async def test_a_session_moved_to_replicas_continues_exactly(nodes, move):
    a0, b0, a1, b1 = nodes["a0"], nodes["b0"], nodes["a1"], nodes["b1"]
    sid = f"m-{move.__name__}"
    position, hidden = await generate(a0, a1, sid, decode_steps=3)
    for source, target in ((a0, b0), (a1, b1)):
        assert await move(source, target, sid) == position
    for _ in range(4):  # each replica gets what its source gets, and answers the same, to the bit
        batch = StepBatch([SequenceStep(sid, position, 1)], hidden)
        mid_a, mid_b = await a0.step(batch), await b0.step(batch)
        assert torch.equal(mid_a.hidden, mid_b.hidden)
        batch = StepBatch(batch.sequences, mid_a.hidden)
        out_a, out_b = await a1.step(batch), await b1.step(batch)
        assert out_a.token_ids == out_b.token_ids and torch.equal(out_a.next_input, out_b.next_input)
        position, hidden = position + 1, out_a.next_input
    assert torch.equal(await b0.outputs(sid, 0, position), await a0.outputs(sid, 0, position))


@on_module_loop
async def test_a_pull_from_an_unreadable_source_is_aborted_a_missing_session_a_miss_a_misfit_refused(nodes):
    """ABORTED (SessionSourceFailed) says the source could not be read, not that the
    node pulling failed: the coordinator then moves the session through itself. A
    session the source does not hold is a cache miss, as its export says; a source
    of another partition is refused as an import of its export would be, and the
    target's session stays."""
    a0, b0, a1 = nodes["a0"], nodes["b0"], nodes["a1"]
    with pytest.raises(CacheMiss, match="ghost"):
        await b0.pull_session("ghost", a0.address)  # the source does not hold it: as its own export says
    started = time.monotonic()
    with pytest.raises(SessionSourceFailed, match="127.0.0.1:1"):
        await b0.pull_session("ghost", "127.0.0.1:1")  # nothing listens there
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 2
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await b0.stub.PullSession(node_pb2.PullSessionRequest(session_id="ghost", source_address="127.0.0.1:1"))
    assert err.value.code() == grpc.StatusCode.ABORTED
    await generate(a0, a1, "x", decode_steps=1)
    await generate(b0, nodes["b1"], "x", decode_steps=0)
    held = await b0.export_session("x")
    with pytest.raises(StepInputError):
        await b0.pull_session("x", a1.address)  # the last partition's session, into partition 0
    after = await b0.export_session("x")
    assert after.length == held.length and torch.equal(after.kv[0], held.kv[0])


@on_module_loop
async def test_an_export_streams_each_layer_then_the_outputs(nodes):
    position, _ = await generate(nodes["a0"], nodes["a1"], "c", decode_steps=1)
    first = await export_chunks(nodes["a0"], "c")
    pieces = [(c.layer, c.HasField("kv"), c.HasField("outputs")) for c in first]
    assert pieces == [(0, True, False), (1, True, False), (0, False, True)]
    assert all((c.session_id, c.length, c.layers) == ("c", position, 2) for c in first)
    assert list(first[0].kv.shape) == [2, 4, position, 16] and list(first[2].outputs.shape) == [position, 64]
    last = await export_chunks(nodes["a1"], "c")  # the last partition keeps no outputs
    assert [(c.layer, c.HasField("outputs")) for c in last] == [(0, False), (1, False)]


@on_module_loop
async def test_exporting_a_session_not_held_is_failed_precondition(nodes):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await export_chunks(nodes["a0"], "ghost")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "ghost" in err.value.details()
    with pytest.raises(CacheMiss, match="ghost"):
        await nodes["a0"].export_session("ghost")


def _edited(chunk: node_pb2.SessionChunk, **fields) -> node_pb2.SessionChunk:
    copy = node_pb2.SessionChunk()
    copy.CopyFrom(chunk)
    for name, value in fields.items():
        if name in ("kv", "outputs"):
            getattr(copy, name).CopyFrom(value)
        else:
            setattr(copy, name, value)
    return copy


def _everywhere(**fields):
    return lambda c: [_edited(x, **fields) for x in c]


# (name, a change to a valid export of partition 0 (chunks: layer 0, layer 1, outputs)): each is refused.
HOSTILE_STREAMS = {
    "no chunks": lambda c: [],
    "another session in one chunk": lambda c: [c[0], _edited(c[1], session_id="other"), c[2]],
    "another length in one chunk": lambda c: [c[0], c[1], _edited(c[2], length=c[2].length + 1)],
    "another layer count in one chunk": lambda c: [c[0], _edited(c[1], layers=3), c[2]],
    "a layer count not this partition's": _everywhere(layers=3),
    "a layer twice": lambda c: [c[0], c[0], c[1], c[2]],
    "a layer missing": lambda c: [c[0], c[2]],
    "a layer outside the count": lambda c: [c[0], _edited(c[1], layer=2), c[2]],
    "a huge layer index": lambda c: [c[0], _edited(c[1], layer=2**32 - 1), c[2]],
    "outputs twice": lambda c: [c[0], c[1], c[2], c[2]],
    "a chunk with nothing": lambda c: [*c, node_pb2.SessionChunk(session_id=c[0].session_id, length=c[0].length, layers=2)],
    "no outputs where they are kept": lambda c: c[:2],
    "bytes that are not the tensor": lambda c: [_edited(c[0], kv=common_pb2.Tensor(data=b"\0" * 7, dtype="float32", shape=[2, 4, c[0].length, 16])), *c[1:]],
    "K/V of another shape": lambda c: [_edited(c[0], kv=tensor_to_proto(torch.zeros(2, 4, c[0].length - 1, 16))), *c[1:]],
    "K/V of another dtype": lambda c: [_edited(c[0], kv=tensor_to_proto(torch.zeros(2, 4, c[0].length, 16, dtype=torch.bfloat16))), *c[1:]],
    "length 0": _everywhere(length=0),
    "a length past the context": _everywhere(length=N_CTX + 1),
    "a session id of a megabyte": _everywhere(session_id="x" * 2**20),
}  # fmt: skip


@on_module_loop
async def test_a_stream_that_is_not_one_whole_export_is_invalid_argument(nodes):
    a0, b0 = nodes["a0"], nodes["b0"]
    await generate(a0, nodes["a1"], "h", decode_steps=2)
    await generate(b0, nodes["b1"], "h", decode_steps=0)  # the target already holds a session of that id
    chunks = await export_chunks(a0, "h")
    held = await b0.export_session("h")
    for name, change in HOSTILE_STREAMS.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await b0.stub.ImportSession(iter(change(chunks)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {err.value.code()} {err.value.details()}"
        after = await b0.export_session("h")  # untouched
        assert after.length == held.length and torch.equal(after.kv[1], held.kv[1]), name
    assert (await b0.stub.ImportSession(iter(chunks))).length == chunks[0].length  # the node still takes a whole one


@on_module_loop
async def test_a_snapshot_that_does_not_fit_is_a_step_input_error_at_the_client(nodes):
    position, _ = await generate(nodes["a0"], nodes["a1"], "w", decode_steps=0)
    snapshot = await nodes["a0"].export_session("w")
    with pytest.raises(StepInputError, match="keeps none"):
        await nodes["b1"].import_session("w", snapshot)  # partition 0's outputs, to the last partition
    with pytest.raises(StepInputError, match="layers"):
        await nodes["b0"].import_session("w", SessionSnapshot(position, snapshot.kv[:1], snapshot.outputs))


@on_module_loop
async def test_info_reports_the_budget_cpu_time_and_queue(nodes):
    info = await nodes["a0"].info()
    assert info.kv_max_tokens == KV_BUDGET and info.cpu_seconds > 0 and info.queued_calls == 0


async def test_queued_calls_counts_the_calls_waiting_on_the_torch_thread(tiny_checkpoint):
    with ThreadPoolExecutor(1) as executor:
        servicer = PartitionNodeServicer(settings(tiny_checkpoint, "q", 0), executor)
        servicer.attach(load_engine(servicer.settings))
        gate = threading.Event()
        executor.submit(gate.wait)  # the torch thread is busy
        calls = [asyncio.create_task(servicer.Release(node_pb2.ReleaseRequest(session_ids=["x"]), None)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert (await servicer.Info(node_pb2.NodeInfoRequest(), None)).queued_calls == 2
        gate.set()
        await asyncio.gather(*calls)
        assert (await servicer.Info(node_pb2.NodeInfoRequest(), None)).queued_calls == 0
        servicer.peers.close()
