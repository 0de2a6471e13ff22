"""splitgpt.v1.Tokenizer over gRPC: protobuf in, a core call, protobuf out.

Ids outside the vocabulary raise the core's TokenIdError, which
`error_mapping` answers with INVALID_ARGUMENT for every method, streams included.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from prometheus_client import CollectorRegistry
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ..core.tokenization import IncrementalDecoder, TextTokenizer, load_tokenizer
from ..logs import configure
from ..rpc import tokenizer_pb2, tokenizer_pb2_grpc
from .cli_settings import settings_from_cli
from .grpc_runtime import GrpcServer
from .internal_auth import InternalSecurity, InternalSecurityError, InternalSecuritySettings
from .metrics_http import MetricsPortError, serve_metrics
from .tokenizer_metrics import TokenizerMetrics

log = logging.getLogger(__name__)

SERVICE_NAME = "splitgpt.v1.Tokenizer"


class TokenizerSettings(InternalSecuritySettings):
    model_config = SettingsConfigDict(env_prefix="SPLITGPT_TOKENIZER_", populate_by_name=True)

    # MODEL_ID is shared with the other services, so it carries no prefix.
    model_id: str = Field("gpt2", validation_alias="MODEL_ID", description="local directory or Hub id")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(50051, description="port to bind; 0 picks a free one")
    metrics_port: int = Field(0, description="Prometheus /metrics over plain HTTP on this port; 0: off")
    metrics_host: str | None = Field(None, description="address of the metrics port; unset: host")
    log_level: str = Field("INFO", description="logging level")


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServicer):
    def __init__(
        self, tokenizer: TextTokenizer, token_bytes: list[bytes] | None = None, metrics: TokenizerMetrics | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.token_bytes = token_bytes  # None: not a byte-level tokenizer
        # Without a served registry the counts go to a private one nobody reads.
        self.metrics = metrics or TokenizerMetrics(CollectorRegistry())

    async def Encode(self, request, context):
        with self.metrics.operation("encode") as op:
            ids = self.tokenizer.encode(request.text)
            op.tokens = len(ids)
        return tokenizer_pb2.TokenIds(ids=ids)

    async def EncodeBatch(self, request, context):
        with self.metrics.operation("encode") as op:
            batch = self.tokenizer.encode_batch(list(request.texts))
            op.tokens = sum(len(ids) for ids in batch)
        return tokenizer_pb2.EncodeBatchResponse(items=[tokenizer_pb2.TokenIds(ids=ids) for ids in batch])

    async def Decode(self, request, context):
        with self.metrics.operation("decode") as op:
            text = self.tokenizer.decode(request.ids, request.skip_special_tokens)
            op.tokens = len(request.ids)
        return tokenizer_pb2.DecodeResponse(text=text)

    async def DecodeBatch(self, request, context):
        with self.metrics.operation("decode") as op:
            texts = self.tokenizer.decode_batch([item.ids for item in request.items], request.skip_special_tokens)
            op.tokens = sum(len(item.ids) for item in request.items)
        return tokenizer_pb2.DecodeBatchResponse(texts=texts)

    async def DecodeStream(self, request_iterator, context):
        # One answer per request (possibly ""), so a client can await the text
        # for each token it sends; one more with the held-back rest at the end.
        # Each request is one decode operation (the stream lives as long as a generation).
        decoder = IncrementalDecoder(self.tokenizer)
        async for request in request_iterator:
            with self.metrics.operation("decode") as op:
                text = decoder.push(request.ids)
                op.tokens = len(request.ids)
            yield tokenizer_pb2.DecodeResponse(text=text)
        yield tokenizer_pb2.DecodeResponse(text=decoder.flush())

    async def GetTokenBytes(self, request, context):
        with self.metrics.operation("table"):  # no tokens: the table is the vocabulary, not a text's
            if self.token_bytes is None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the tokenizer is not byte-level: use DecodeStream")
        return tokenizer_pb2.TokenBytes(tokens=self.token_bytes)

    async def Info(self, request, context):
        return tokenizer_pb2.TokenizerInfo(
            source=self.tokenizer.source,
            vocab_size=self.tokenizer.vocab_size,
            eos_token_id=self.tokenizer.eos_token_id,
        )


async def start(settings: TokenizerSettings) -> GrpcServer:
    """Bind first (a taken port fails before any loading), load, then serve."""
    server = GrpcServer(SERVICE_NAME, settings.host, settings.port, InternalSecurity.from_settings(settings))
    metrics = TokenizerMetrics()
    metrics_server = serve_metrics(metrics.registry, settings.metrics_host or settings.host, settings.metrics_port, "tokenizer")
    if metrics_server is not None:
        server.on_stop.append(metrics_server.close)
    # Reading the files, or timing out on the Hub, must not stall the loop.
    tokenizer = await asyncio.to_thread(load_tokenizer, settings.model_id)
    token_bytes = await asyncio.to_thread(tokenizer.token_bytes)  # 50k tokens: ~0.1 s, off the loop
    server.add(tokenizer_pb2_grpc.add_TokenizerServicer_to_server, TokenizerServicer(tokenizer, token_bytes, metrics))
    await server.start()
    await server.set_serving(True)
    log.info("tokenizer serving on %s:%d, vocabulary from %s", settings.host, server.port, tokenizer.source)
    return server


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_cli(TokenizerSettings, argv, "splitgpt tokenizer", "Serve GPT-2 tokenization.")
    configure(settings.log_level)

    async def run() -> None:
        server = await start(settings)
        await server.run_until_signal()

    try:
        asyncio.run(run())
    except (InternalSecurityError, MetricsPortError) as exc:
        log.error("tokenizer cannot start: %s", exc)
        raise SystemExit(2) from None
