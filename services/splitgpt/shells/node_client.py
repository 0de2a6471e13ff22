"""`core.node_contract.NodeClient` over gRPC: one channel per node, a deadline on every call.

Steps travel over one long-lived StepStream per node (`step_stream.StepStream`),
the rest as unary calls. A failed call or step raises the contract's exceptions
(CacheMiss, StepInputError, NodeFailed), mapped from its status in one place:
`error_mapping.error_from_status`.
"""

from __future__ import annotations

import grpc
import torch

from ..core.node_contract import StepBatch, StepResult
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
