"""`core.node_contract.NodeClient` over gRPC: one channel per node, a deadline on every call.

Steps travel over one long-lived StepStream per node (`step_stream.StepStream`),
a session's export and import as streams of chunks (`session_chunks` and
`SnapshotReader`, which the node uses too), the rest as unary calls. A failed
call or step raises the contract's exceptions (CacheMiss, StepInputError,
NodeFailed), mapped from its status in one place: `error_mapping.error_from_status`.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import torch

from ..core.node_contract import SessionSnapshot, StepBatch, StepInputError, StepResult
from ..rpc import node_pb2, node_pb2_grpc
from .convert import fill_tensor, sampling_to_proto, tensor_from_proto
from .error_mapping import error_from_status
from .grpc_runtime import client_channel
from .internal_auth import InternalSecurity
from .step_stream import StepStream, StepTable


class GrpcNodeClient:
    def __init__(
        self, address: str, timeout_s: float, security: InternalSecurity | None = None, table: StepTable | None = None
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        # The token goes as each call's metadata (precomputed): the step path skips
        # grpc.aio's client interceptors, which cost a task per call.
        self.channel = client_channel(address, security, add_token=False)
        self._metadata = security.call_metadata if security is not None else None
        self.stub = node_pb2_grpc.PartitionNodeStub(self.channel)
        # `table`: shared by all of a coordinator's node clients (step_stream says why).
        self.steps = StepStream(self.stub, self._metadata, address, timeout_s, table)

    async def info(self, timeout_s: float | None = None) -> node_pb2.NodeInfo:
        return await self._call(self.stub.Info, node_pb2.NodeInfoRequest(), timeout_s)

    async def embed(self, items: list[tuple[list[int], int]]) -> list[torch.Tensor]:
        request = node_pb2.EmbedRequest(items=[node_pb2.EmbedItem(token_ids=ids, position=pos) for ids, pos in items])
        reply = await self._call(self.stub.Embed, request)
        return [tensor_from_proto(h) for h in reply.hidden]

    async def step(self, batch: StepBatch) -> StepResult:
        return result_from_reply(await self.steps.step(step_request(batch)))

    async def release(self, session_ids: list[str]) -> None:
        await self._call(self.stub.Release, node_pb2.ReleaseRequest(session_ids=session_ids))

    async def outputs(self, session_id: str, start: int, end: int) -> torch.Tensor:
        request = node_pb2.ReadOutputsRequest(session_id=session_id, start=start, end=end)
        return tensor_from_proto((await self._call(self.stub.ReadOutputs, request)).hidden)

    async def export_session(self, session_id: str) -> SessionSnapshot:
        call = self.stub.ExportSession(
            node_pb2.ExportSessionRequest(session_id=session_id), timeout=self.timeout_s, metadata=self._metadata
        )
        reader = SnapshotReader()
        try:
            async for chunk in call:
                reader.add(chunk)
        except grpc.aio.AioRpcError as exc:
            raise error_from_status(exc.code(), exc.details(), self.address) from exc
        return reader.snapshot()[1]

    async def import_session(self, session_id: str, snapshot: SessionSnapshot) -> int:
        return (await self._call(self.stub.ImportSession, session_chunks(session_id, snapshot))).length

    async def pull_session(self, session_id: str, source_address: str) -> int:
        request = node_pb2.PullSessionRequest(session_id=session_id, source_address=source_address)
        return (await self._call(self.stub.PullSession, request)).length

    async def _call(self, method, request, timeout_s: float | None = None):
        try:
            return await method(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_status(exc.code(), exc.details(), self.address) from exc

    async def close(self) -> None:
        self.steps.close()
        await self.channel.close()


def step_request(batch: StepBatch) -> node_pb2.StepRequest:
    request = node_pb2.StepRequest(
        sequences=[
            node_pb2.SequenceStep(
                session_id=s.session_id,
                position=s.position,
                length=s.length,
                sampling=sampling_to_proto(s.sampling),
                top_logprobs=s.sampling.top_logprobs,
                block_hashes=s.block_hashes,
                reuse_blocks=s.reuse_blocks,
            )
            for s in batch.sequences
        ],
        concurrent_steps=batch.concurrent_steps,
    )
    fill_tensor(request.hidden, batch.hidden)
    return request


def result_from_reply(reply: node_pb2.StepResponse) -> StepResult:
    return StepResult(
        hidden=tensor_from_proto(reply.hidden) if reply.HasField("hidden") else None,
        token_ids=[r.token_id for r in reply.results],
        logprobs=[r.logprob for r in reply.results],
        top_logprobs=[tuple(zip(r.top_token_ids, r.top_logprobs, strict=True)) for r in reply.results],
        next_input=tensor_from_proto(reply.next_input) if reply.HasField("next_input") else None,
        partition_ms=list(reply.relay_compute_ms),
    )


def session_chunks(session_id: str, snapshot: SessionSnapshot) -> Iterator[node_pb2.SessionChunk]:
    """A session as its export streams it: each layer's K/V, then the kept outputs.
    Each chunk is encoded when it is asked for: one layer's megabytes at a time."""
    header = {"session_id": session_id, "length": snapshot.length, "layers": len(snapshot.kv)}
    for layer, kv in enumerate(snapshot.kv):
        chunk = node_pb2.SessionChunk(layer=layer, **header)
        fill_tensor(chunk.kv, kv)
        yield chunk
    if snapshot.outputs is not None:
        chunk = node_pb2.SessionChunk(**header)
        fill_tensor(chunk.outputs, snapshot.outputs)
        yield chunk


class SnapshotReader:
    """A session's chunks, in any order, into (session id, SessionSnapshot).

    A stream that is not one session's whole export is a StepInputError
    (INVALID_ARGUMENT): chunks that disagree on the session, its length or its
    layer count, a layer outside that count or sent twice, outputs twice, a
    chunk with neither, a layer missing at the end. Every chunk fills a place
    of its own, so a stream holds at most `layers` + 1 of them; `layers` is the
    count the receiver serves (a node), or None to take the stream's (a client
    reading its node's export).
    """

    def __init__(self, layers: int | None = None) -> None:
        self._layers = layers
        self._header: tuple[str, int, int] | None = None  # session id, length, layers: the first chunk's
        self._kv: dict[int, torch.Tensor] = {}
        self._outputs: torch.Tensor | None = None

    def add(self, chunk: node_pb2.SessionChunk) -> None:
        header = (chunk.session_id, chunk.length, chunk.layers)
        if self._header is None:
            if self._layers is not None and chunk.layers != self._layers:
                raise StepInputError(f"a session of {chunk.layers} layers: this partition has {self._layers}")
            self._header = header
        elif header != self._header:
            raise StepInputError(f"chunks disagree on (session, length, layers): {self._header} then {header}")
        has_kv, has_outputs = chunk.HasField("kv"), chunk.HasField("outputs")
        if not has_kv and not has_outputs:
            raise StepInputError("a session chunk with neither K/V nor outputs")
        if has_kv:
            if chunk.layer >= chunk.layers or chunk.layer in self._kv:
                raise StepInputError(f"layer {chunk.layer}'s K/V outside [0, {chunk.layers}) or sent twice")
            self._kv[chunk.layer] = tensor_from_proto(chunk.kv)
        if has_outputs:
            if self._outputs is not None:
                raise StepInputError("outputs sent twice")
            self._outputs = tensor_from_proto(chunk.outputs)

    def snapshot(self) -> tuple[str, SessionSnapshot]:
        if self._header is None:
            raise StepInputError("an import of no chunks")
        session_id, length, layers = self._header
        if len(self._kv) != layers:  # each key is a distinct layer below `layers`
            missing = next(i for i in range(layers) if i not in self._kv)
            raise StepInputError(f"K/V for {len(self._kv)} of {layers} layers: layer {missing} is missing")
        return session_id, SessionSnapshot(length, [self._kv[i] for i in range(layers)], self._outputs)
