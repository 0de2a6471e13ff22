"""gRPC clients the gateway uses: the tokenizer and the coordinator."""

from __future__ import annotations

import grpc

from ..rpc import coordinator_pb2, coordinator_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc
from ..shells.grpc_runtime import insecure_channel, probe_health
from .errors import from_grpc
from .settings import ApiSettings


class DecodeStream:
    """One request's incremental detokenization over the tokenizer's DecodeStream."""

    def __init__(self, stub: tokenizer_pb2_grpc.TokenizerStub, timeout_s: float) -> None:
        self._call = stub.DecodeStream(timeout=timeout_s)

    async def push(self, ids: list[int]) -> str:
        try:
            await self._call.write(tokenizer_pb2.DecodeStreamRequest(ids=ids))
            return (await self._call.read()).text
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, "tokenizer") from exc

    async def flush(self) -> str:
        try:
            await self._call.done_writing()
            reply = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, "tokenizer") from exc
        return "" if reply is grpc.aio.EOF else reply.text

    def cancel(self) -> None:
        self._call.cancel()


class Backends:
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.tokenizer_channel = insecure_channel(settings.tokenizer_address)
        self.coordinator_channel = insecure_channel(settings.coordinator_address)
        self.tokenizer = tokenizer_pb2_grpc.TokenizerStub(self.tokenizer_channel)
        self.coordinator = coordinator_pb2_grpc.CoordinatorStub(self.coordinator_channel)
        self._model: coordinator_pb2.ModelInfo | None = None

    async def encode(self, text: str) -> list[int]:
        try:
            reply = await self.tokenizer.Encode(tokenizer_pb2.EncodeRequest(text=text), timeout=self.settings.rpc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, "tokenizer") from exc
        return list(reply.ids)

    def decode_stream(self) -> DecodeStream:
        return DecodeStream(self.tokenizer, self.settings.request_timeout_s)

    async def model_info(self) -> coordinator_pb2.ModelInfo:
        """Context size, vocabulary and name of the served model (asked once)."""
        if self._model is None:
            try:
                self._model = await self.coordinator.GetModelInfo(
                    coordinator_pb2.ModelInfoRequest(), timeout=self.settings.rpc_timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                raise from_grpc(exc, "coordinator") from exc
        return self._model

    def generate(self, request: coordinator_pb2.GenerateRequest):
        return self.coordinator.Generate(request, timeout=self.settings.request_timeout_s)

    async def cluster(self) -> coordinator_pb2.ClusterState:
        try:
            return await self.coordinator.GetCluster(coordinator_pb2.ClusterRequest(), timeout=self.settings.rpc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, "coordinator") from exc

    async def readiness(self) -> dict[str, str]:
        return {
            "tokenizer": await probe_health(self.tokenizer_channel, timeout_s=self.settings.rpc_timeout_s),
            "coordinator": await probe_health(self.coordinator_channel, timeout_s=self.settings.rpc_timeout_s),
        }

    async def close(self) -> None:
        await self.tokenizer_channel.close()
        await self.coordinator_channel.close()

