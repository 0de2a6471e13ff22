"""Malformed and hostile steps sent straight to a real node over gRPC.

Whatever a caller puts in a StepRequest or EmbedRequest (a shape that does not
match its bytes, a dtype not allowed, more rows than the batch, a hidden width
that is not the model's, positions beyond the context, negative sizes, absurd
lengths, too many sequences, sampling that cannot be sampled), the node answers
INVALID_ARGUMENT before allocating anything for it, and keeps serving.
"""

from __future__ import annotations

import math
import struct

import grpc
import pytest
import pytest_asyncio

from splitgpt.rpc import common_pb2, node_pb2, node_pb2_grpc
from splitgpt.shells.grpc_runtime import insecure_channel
from splitgpt.shells.node_service import NodeSettings, start

D, N_CTX, VOCAB = 64, 128, 50257  # the tiny checkpoint
INVALID = grpc.StatusCode.INVALID_ARGUMENT
KV_BUDGET = 512
# One node for the module: its tests share the module's event loop.
on_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(tiny_checkpoint):
    """The whole model in one node: it takes hidden states in and samples (last partition)."""
    server = await start(
        NodeSettings(model_id=str(tiny_checkpoint), node_id="n", partition=0, num_partitions=1, port=0, kv_max_tokens=KV_BUDGET)
    )
    channel = insecure_channel(f"127.0.0.1:{server.port}")
    yield node_pb2_grpc.PartitionNodeStub(channel)
    await channel.close()
    await server.stop(0)


def tensor(shape: list[int], dtype: str = "float32", nbytes: int | None = None) -> common_pb2.Tensor:
    size = {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 4)
    n = nbytes if nbytes is not None else max(0, math.prod(shape)) * size
    return common_pb2.Tensor(data=bytes(n), dtype=dtype, shape=shape)


def seq(session_id: str = "s", position: int = 0, length: int = 1, **sampling) -> node_pb2.SequenceStep:
    return node_pb2.SequenceStep(
        session_id=session_id, position=position, length=length, sampling=common_pb2.SamplingParams(**sampling)
    )


def step(hidden: common_pb2.Tensor, *sequences: node_pb2.SequenceStep) -> node_pb2.StepRequest:
    return node_pb2.StepRequest(sequences=list(sequences) or [seq()], hidden=hidden)


async def invalid(call) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    assert exc.value.code() == INVALID, f"{exc.value.code()}: {exc.value.details()}"
    return exc.value.details()


# (name, request): every one is refused with INVALID_ARGUMENT.
HOSTILE_STEPS = {
    "fewer bytes than the shape": step(tensor([1, D], nbytes=4 * D - 1)),
    "more bytes than the shape": step(tensor([1, D], nbytes=4 * D + 4)),
    "a dtype not allowed": step(tensor([1, D], dtype="float64", nbytes=8 * D)),
    "a dtype that is no dtype": step(tensor([1, D], dtype="int8\x00; rm -rf /", nbytes=D)),
    "not this node's dtype": step(tensor([1, D], dtype="float16")),
    "a negative size": step(tensor([-1, -D], nbytes=4 * D)),
    "negative sizes hiding a huge shape": step(tensor([-(2**62), -4], nbytes=0)),
    "a huge shape with no bytes": step(tensor([2**40, 2**40], nbytes=16)),
    "an empty tensor of absurd sizes": step(tensor([0, 2**62, 2**62], nbytes=0), seq(length=0)),
    "too many dimensions": step(tensor([1] * 64 + [D])),
    "one dimension": step(tensor([D])),
    "more rows than the batch": step(tensor([2, D])),
    "fewer rows than the batch": step(tensor([1, D]), seq("a"), seq("b")),
    "a hidden width that is not the model's": step(tensor([1, D + 1])),
    "no rows for a sequence": step(tensor([0, D]), seq(length=0)),
    "positions beyond the context": step(tensor([1, D]), seq(position=N_CTX)),
    "a huge length": step(tensor([1, D]), seq(length=2**32 - 1)),
    "a huge position": step(tensor([1, D]), seq(position=2**32 - 1)),
    "the same session twice": step(tensor([2, D]), seq("a"), seq("a")),
    "a session id of a megabyte": step(tensor([1, D]), seq("x" * 2**20)),
    "too many sequences": step(tensor([KV_BUDGET + 1, D]), *(seq(f"s{i}") for i in range(KV_BUDGET + 1))),
    "a temperature that is not a number": step(tensor([1, D]), seq(temperature=float("nan"))),
    "an infinite temperature": step(tensor([1, D]), seq(temperature=float("inf"))),
    "a negative temperature": step(tensor([1, D]), seq(temperature=-1.0)),
    "top_p above 1": step(tensor([1, D]), seq(temperature=1.0, top_p=1.5)),
    "an infinite top_p": step(tensor([1, D]), seq(temperature=1.0, top_p=float("inf"))),
    "a suppressed id outside the vocabulary": step(tensor([1, D]), seq(suppress_token_ids=[VOCAB])),
    "every token suppressed": step(tensor([1, D]), seq(suppress_token_ids=list(range(VOCAB)))),
    "more alternatives than the vocabulary": step(tensor([1, D]), node_pb2.SequenceStep(session_id="s", position=0, length=1, top_logprobs=VOCAB + 1)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(HOSTILE_STEPS))
@on_module_loop
async def test_a_hostile_step_is_invalid_argument(node, name):
    await invalid(node.Step(HOSTILE_STEPS[name]))


HOSTILE_EMBEDS = {
    "no token ids": [node_pb2.EmbedItem(token_ids=[], position=0)],
    "an id outside the vocabulary": [node_pb2.EmbedItem(token_ids=[VOCAB], position=0)],
    "positions beyond the context": [node_pb2.EmbedItem(token_ids=[1, 2], position=N_CTX - 1)],
    "a huge position": [node_pb2.EmbedItem(token_ids=[1], position=2**32 - 1)],
    "more tokens than the context": [node_pb2.EmbedItem(token_ids=[1] * (N_CTX + 1), position=0)],
    "more tokens than the KV budget": [node_pb2.EmbedItem(token_ids=[1] * N_CTX, position=0)] * (KV_BUDGET // N_CTX + 1),
}


@pytest.mark.parametrize("name", list(HOSTILE_EMBEDS))
@on_module_loop
async def test_a_hostile_embed_is_invalid_argument(node, name):
    await invalid(node.Embed(node_pb2.EmbedRequest(items=HOSTILE_EMBEDS[name])))


@on_module_loop
async def test_the_node_still_serves_after_every_hostile_call(node):
    for request in HOSTILE_STEPS.values():
        with pytest.raises(grpc.aio.AioRpcError):
            await node.Step(request)
    embedded = (await node.Embed(node_pb2.EmbedRequest(items=[node_pb2.EmbedItem(token_ids=[15496, 11], position=0)]))).hidden[0]
    reply = await node.Step(step(embedded, seq("ok", 0, 2)))
    assert len(reply.results) == 1 and 0 <= reply.results[0].token_id < VOCAB
    # The session the refused steps named was never started: a step at position 1 misses.
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await node.Step(step(tensor([1, D]), seq("s", 1, 1)))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_hidden_bytes_are_read_as_the_declared_dtype_only():
    """core.tensors: the bytes become exactly the tensor the dtype and shape say, nothing else."""
    from splitgpt.core import tensors

    data = struct.pack("<4f", 1.0, -2.0, 3.5, float("inf"))
    t = tensors.decode(data, "float32", [2, 2])
    assert t.tolist() == [[1.0, -2.0], [3.5, float("inf")]]
    bad = [("float32", [3]), ("int64", [2]), ("float32", [-2, -2]), ("float32", [1] * 5 + [4])]
    # Empty, but sizes whose strides overflow: refused, not a torch error.
    bad += [("float32", [0, 2**62, 2**62]), ("float32", [2**63 - 1, 0])]
    for dtype, shape in bad:
        with pytest.raises(tensors.TensorFormatError):
            tensors.decode(data, dtype, shape)
