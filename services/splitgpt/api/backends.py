"""gRPC clients the gateway uses: the tokenizer and the coordinator."""

from __future__ import annotations

import asyncio
import time

import grpc

from ..core.byte_decoding import ByteTableDecoder
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


TOKEN_BYTES_RETRY_S = 5.0


class LocalDecodeStream:
    """One request's incremental detokenization in the gateway, from the
    tokenizer service's token-bytes table: no round trip per token."""

    def __init__(self, table: list[bytes]) -> None:
        self._decoder = ByteTableDecoder(table)

    async def push(self, ids: list[int]) -> str:
        return self._decoder.push(ids)

    async def flush(self) -> str:
        return self._decoder.flush()

    def cancel(self) -> None:
        pass


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
        self._token_bytes: list[bytes] | None = None  # [] once the tokenizer says it has none
        self._token_bytes_lock = asyncio.Lock()
        self._token_bytes_retry_at = 0.0  # after a failed fetch, streams decode remotely until then

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

    async def decode_stream(self) -> LocalDecodeStream | DecodeStream:
        """Decoded here from the token-bytes table where the tokenizer is byte-level
        (GPT-2's is), else by the tokenizer service's DecodeStream."""
        table = await self._token_bytes_table()
        if table:
            return LocalDecodeStream(table)
        return DecodeStream(self.tokenizers[self._preferred], self.settings.request_timeout_s)

    async def _token_bytes_table(self) -> list[bytes] | None:
        if self._token_bytes is not None or time.monotonic() < self._token_bytes_retry_at:
            return self._token_bytes
        async with self._token_bytes_lock:  # fetched once, however many requests start together
            if self._token_bytes is None and time.monotonic() >= self._token_bytes_retry_at:
                stub = self.tokenizers[self._preferred]
                try:
                    reply = await stub.GetTokenBytes(tokenizer_pb2.TokenBytesRequest(), timeout=self.settings.rpc_timeout_s)
                    self._token_bytes = list(reply.tokens)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED):
                        self._token_bytes = []  # not byte-level: every stream decodes remotely
                    else:  # unreachable for now: decode remotely, and ask again in a while, not per request
                        self._token_bytes_retry_at = time.monotonic() + TOKEN_BYTES_RETRY_S
        return self._token_bytes

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

