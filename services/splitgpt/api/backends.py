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
        addresses = [a.strip() for a in settings.tokenizer_address.split(",") if a.strip()]
        self.tokenizer_channels = [insecure_channel(a) for a in addresses]
        self.tokenizers = [tokenizer_pb2_grpc.TokenizerStub(c) for c in self.tokenizer_channels]
        self._preferred = 0  # the tokenizer replica that answered last
        self.coordinator_channel = insecure_channel(settings.coordinator_address)
        self.coordinator = coordinator_pb2_grpc.CoordinatorStub(self.coordinator_channel)
        self._model: coordinator_pb2.ModelInfo | None = None

    def _tokenizer_order(self) -> list[int]:
        n = len(self.tokenizers)
        return [(self._preferred + i) % n for i in range(n)]

    async def encode(self, text: str) -> list[int]:
        """Encode on the tokenizer replica that answered last; an unreachable one is retried on the next."""
        failure = None
        for i in self._tokenizer_order():
            try:
                reply = await self.tokenizers[i].Encode(tokenizer_pb2.EncodeRequest(text=text), timeout=self.settings.rpc_timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise from_grpc(exc, "tokenizer") from exc
                failure = exc
                continue
            self._preferred = i
            return list(reply.ids)
        raise from_grpc(failure, "tokenizer") from failure

    def decode_stream(self) -> DecodeStream:
        return DecodeStream(self.tokenizers[self._preferred], self.settings.request_timeout_s)

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

    async def tasks(self) -> coordinator_pb2.TaskList:
        try:
            return await self.coordinator.ListTasks(coordinator_pb2.ListTasksRequest(), timeout=self.settings.rpc_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, "coordinator") from exc

    async def cancel_task(self, request_id: str) -> bool:
        try:
            reply = await self.coordinator.CancelTask(
                coordinator_pb2.CancelTaskRequest(request_id=request_id), timeout=self.settings.rpc_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, "coordinator") from exc
        return reply.cancelled

    async def readiness(self) -> dict[str, str]:
        statuses = [await probe_health(c, timeout_s=self.settings.rpc_timeout_s) for c in self.tokenizer_channels]
        return {
            "tokenizer": "SERVING" if "SERVING" in statuses else statuses[0],
            "coordinator": await probe_health(self.coordinator_channel, timeout_s=self.settings.rpc_timeout_s),
        }

    async def close(self) -> None:
        for channel in self.tokenizer_channels:
            await channel.close()
        await self.coordinator_channel.close()

