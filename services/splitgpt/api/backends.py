"""gRPC clients the gateway uses: the tokenizer and the coordinator.

The edge of the gateway: protobuf and grpc stop here. Callers get core
generation types, REST schemas and plain values, and every gRPC failure leaves
as an ApiError (through `rpc_errors`, one status table in api/errors.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from ..core.byte_decoding import ByteTableDecoder
from ..core.generation_types import FinishEvent, GenerationRequest, TokenEvent
from ..rpc import coordinator_pb2, coordinator_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc
from ..shells.grpc_runtime import client_channel, probe_health
from ..shells.internal_auth import InternalSecurity
from . import ownership, wire
from .cluster_admin import ClusterAdmin
from .errors import ApiError
from .grpc_errors import from_grpc, rpc_errors
from .schemas import ClusterResponse, ModelInfo, TasksResponse
from .settings import ApiSettings


class DecodeStream:
    """One request's incremental detokenization over the tokenizer's DecodeStream."""

    def __init__(self, stub: tokenizer_pb2_grpc.TokenizerStub, timeout_s: float, model: str = "") -> None:
        self._call = stub.DecodeStream(timeout=timeout_s)
        self._model = model  # named in the first message only

    async def push(self, ids: list[int]) -> str:
        with rpc_errors("tokenizer"):
            await self._call.write(tokenizer_pb2.DecodeStreamRequest(ids=ids, model=self._model))
            self._model = ""
            return (await self._call.read()).text

    async def flush(self) -> str:
        with rpc_errors("tokenizer"):
            await self._call.done_writing()
            reply = await self._call.read()
        return "" if reply is grpc.aio.EOF else reply.text

    def cancel(self) -> None:
        self._call.cancel()


TOKEN_BYTES_RETRY_S = 5.0


@dataclass
class TokenTable:
    """One model's token-bytes table as the gateway holds it (fetched once)."""

    tokens: list[bytes] | None = None  # [] once the tokenizer says it has none
    max_chars_per_token: int | None = None
    retry_at: float = 0.0  # after a failed fetch, streams decode remotely until then
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


MAX_KNOWN_MODELS = 256  # model infos kept: the coordinator's names only (an unknown one is a 404, never kept)


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
        security = InternalSecurity.from_settings(settings)  # the internal token and TLS
        self.tokenizer_channels = [client_channel(a, security) for a in addresses]
        self.tokenizers = [tokenizer_pb2_grpc.TokenizerStub(c) for c in self.tokenizer_channels]
        self._preferred = 0  # the tokenizer replica that answered last
        self.coordinator_channel = client_channel(settings.coordinator_address, security)
        self.coordinator = coordinator_pb2_grpc.CoordinatorStub(self.coordinator_channel)
        self.admin = ClusterAdmin(self.coordinator, settings.rpc_timeout_s)
        self._models: dict[str, ModelInfo] = {}  # by the name asked for ("": the default model)
        # By model name ("": the default model), for the names the coordinator serves only.
        self._token_tables: dict[str, TokenTable] = {}

    def _tokenizer_order(self) -> list[int]:
        n = len(self.tokenizers)
        return [(self._preferred + i) % n for i in range(n)]

    async def encode(self, text: str, model: str = "") -> list[int]:
        """Encode with `model`'s tokenizer on the tokenizer replica that answered last; an
        unreachable one is retried on the next."""
        failure = None
        for i in self._tokenizer_order():
            try:
                reply = await self.tokenizers[i].Encode(
                    tokenizer_pb2.EncodeRequest(text=text, model=model), timeout=self.settings.rpc_timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise from_grpc(exc, "tokenizer") from exc
                failure = exc  # this replica is down or stuck: the next one may answer
                continue
            self._preferred = i
            return list(reply.ids)
        raise from_grpc(failure, "tokenizer") from failure

    async def decode_stream(self, model: str = "") -> LocalDecodeStream | DecodeStream:
        """Decoded here from `model`'s token-bytes table where its tokenizer is byte-level
        (GPT-2's is), else by the tokenizer service's DecodeStream."""
        table = await self._token_bytes_table(model)
        if table:
            return LocalDecodeStream(table)
        return DecodeStream(self.tokenizers[self._preferred], self.settings.request_timeout_s, model)

    async def max_chars_per_token(self, model: str = "") -> int | None:
        """The most characters one token can stand for, from the token-bytes
        table; None where there is no table (not byte-level, or not reachable now).

        A character starts at exactly one byte that is not a UTF-8 continuation
        byte (10xxxxxx), so a text of C characters needs at least C / L tokens,
        L being the most such bytes in any one token (66 in GPT-2's vocabulary).
        """
        table = await self._token_bytes_table(model)
        if not table:
            return None
        state = self._token_tables[model]
        if state.max_chars_per_token is None:
            state.max_chars_per_token = max(sum(1 for b in token if b & 0xC0 != 0x80) for token in table)
        return state.max_chars_per_token

    async def _token_bytes_table(self, model: str = "") -> list[bytes] | None:
        """`model`: a name the coordinator serves (the callers resolved it with model_info first)."""
        state = self._token_tables.setdefault(model, TokenTable())
        if state.tokens is not None or time.monotonic() < state.retry_at:
            return state.tokens
        async with state.lock:  # fetched once, however many requests start together
            if state.tokens is None and time.monotonic() >= state.retry_at:
                stub = self.tokenizers[self._preferred]
                request = tokenizer_pb2.TokenBytesRequest(model=model)
                try:
                    reply = await stub.GetTokenBytes(request, timeout=self.settings.rpc_timeout_s)
                    state.tokens = list(reply.tokens)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED):
                        state.tokens = []  # not byte-level: every stream decodes remotely
                    else:  # unreachable for now: decode remotely, and ask again in a while, not per request
                        state.retry_at = time.monotonic() + TOKEN_BYTES_RETRY_S
        return state.tokens

    async def token_texts(self, ids: list[int], model: str = "") -> list[str]:
        """Each token's own text (a token that is part of a UTF-8 character shows U+FFFD)."""
        table = await self._token_bytes_table(model)
        if table:
            return [table[i].decode("utf-8", "replace") if 0 <= i < len(table) else "" for i in ids]
        request = tokenizer_pb2.DecodeBatchRequest(items=[tokenizer_pb2.TokenIds(ids=[i]) for i in ids], model=model)
        with rpc_errors("tokenizer"):
            reply = await self.tokenizers[self._preferred].DecodeBatch(request, timeout=self.settings.rpc_timeout_s)
        return list(reply.texts)

    async def model_info(self, model: str | None = None) -> ModelInfo:
        """Context size, vocabulary and name of a served model (None: the default one),
        asked once per name: a model keeps its checkpoint, whatever its split. A name
        the coordinator does not serve is a 404 `model_not_found`."""
        key = model or ""
        if key not in self._models:
            try:
                reply = await self.coordinator.GetModelInfo(
                    coordinator_pb2.ModelInfoRequest(model=key), timeout=self.settings.rpc_timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise ApiError(404, "model_not_found", exc.details() or f"no model {key!r}", param="model") from exc
                raise from_grpc(exc, "coordinator") from exc
            if len(self._models) < MAX_KNOWN_MODELS:
                self._models[key] = wire.model_info(reply)
            else:
                return wire.model_info(reply)
        return self._models[key]

    async def models(self) -> list[ModelInfo]:
        """Every model the coordinator serves, the default first, with whether each is ready now."""
        with rpc_errors("coordinator"):
            reply = await self.coordinator.ListModels(coordinator_pb2.ListModelsRequest(), timeout=self.settings.rpc_timeout_s)
        return [wire.model_info(m) for m in reply.models]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent | FinishEvent]:
        """The coordinator's events for `request`; closing the iterator early
        cancels the call, and so frees the sequence's caches on every node."""
        # Run under the caller's namespace (api/ownership.py): what makes it theirs to list and cancel.
        owned = dataclasses.replace(request, request_id=ownership.coordinator_id(request.request_id), tenant=ownership.tenant())
        call = self.coordinator.Generate(wire.generate_request(owned), timeout=self.settings.request_timeout_s)
        try:
            with rpc_errors("coordinator"):
                async for event in call:
                    yield wire.generate_event(event)
        finally:
            call.cancel()

    async def cluster(self) -> ClusterResponse:
        with rpc_errors("coordinator"):
            reply = await self.coordinator.GetCluster(coordinator_pb2.ClusterRequest(), timeout=self.settings.rpc_timeout_s)
        return wire.cluster(reply)

    async def tasks(self) -> TasksResponse:
        with rpc_errors("coordinator"):
            reply = await self.coordinator.ListTasks(coordinator_pb2.ListTasksRequest(), timeout=self.settings.rpc_timeout_s)
        listing = wire.tasks(reply)
        # Only the caller's own (all for an admin key, or with no keys), by the ids they know them by.
        visible = []
        for task in listing.tasks:
            shown = ownership.visible_id(task.request_id)
            if shown is not None:
                visible.append(task.model_copy(update={"request_id": shown}))
        return TasksResponse(tasks=visible)

    async def cancel_task(self, request_id: str) -> bool:
        """False when no request the caller may cancel runs under `request_id`."""
        for candidate in ownership.cancel_candidates(request_id):
            with rpc_errors("coordinator"):
                reply = await self.coordinator.CancelTask(
                    coordinator_pb2.CancelTaskRequest(request_id=candidate), timeout=self.settings.rpc_timeout_s
                )
            if reply.cancelled:
                return True
        return False

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
