"""splitgpt.v1.Tokenizer over gRPC: protobuf in, a core call, protobuf out.

Ids outside the vocabulary raise the core's TokenIdError, which
`error_mapping` answers with INVALID_ARGUMENT for every method, streams included.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ..core.tokenization import IncrementalDecoder, TextTokenizer, load_tokenizer
from ..core.vocabulary import ModelNotServed
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
    # Every served model's tokenizer, as the coordinator names the models: "name=MODEL,name=MODEL"
    # (MODEL a directory or Hub id). Unset: MODEL_ID's alone, for whatever model a request names.
    models: str = Field("", description="name=MODEL pairs, comma-separated: one tokenizer per served model")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(50051, description="port to bind; 0 picks a free one")
    metrics_port: int = Field(0, description="Prometheus /metrics over plain HTTP on this port; 0: off")
    metrics_host: str | None = Field(None, description="address of the metrics port; unset: host")
    log_level: str = Field("INFO", description="logging level")


@dataclass(frozen=True)
class LoadedTokenizer:
    tokenizer: TextTokenizer
    token_bytes: list[bytes] | None  # None: not a byte-level tokenizer


class TokenizerServicer(tokenizer_pb2_grpc.TokenizerServicer):
    def __init__(
        self,
        tokenizer: TextTokenizer,
        token_bytes: list[bytes] | None = None,
        metrics: TokenizerMetrics | None = None,
        models: dict[str, LoadedTokenizer] | None = None,
    ) -> None:
        """`tokenizer`: the default model's; `models`: each served model's by name. Without
        `models`, every name gets the default tokenizer (one model, or one shared vocabulary)."""
        self.default = LoadedTokenizer(tokenizer, token_bytes)
        self.models = models
        # Without a served registry the counts go to a private one nobody reads.
        self.metrics = metrics or TokenizerMetrics(CollectorRegistry())

    def _for(self, model: str) -> LoadedTokenizer:
        if not model or self.models is None:
            return self.default
        loaded = self.models.get(model)
        if loaded is None:
            raise ModelNotServed(f"no tokenizer for model {model!r}: this service has {sorted(self.models)}")
        return loaded

    async def Encode(self, request, context):
        tokenizer = self._for(request.model).tokenizer
        with self.metrics.operation("encode") as op:
            ids = tokenizer.encode(request.text)
            op.tokens = len(ids)
        return tokenizer_pb2.TokenIds(ids=ids)

    async def EncodeBatch(self, request, context):
        tokenizer = self._for(request.model).tokenizer
        with self.metrics.operation("encode") as op:
            batch = tokenizer.encode_batch(list(request.texts))
            op.tokens = sum(len(ids) for ids in batch)
        return tokenizer_pb2.EncodeBatchResponse(items=[tokenizer_pb2.TokenIds(ids=ids) for ids in batch])

    async def Decode(self, request, context):
        tokenizer = self._for(request.model).tokenizer
        with self.metrics.operation("decode") as op:
            text = tokenizer.decode(request.ids, request.skip_special_tokens)
            op.tokens = len(request.ids)
        return tokenizer_pb2.DecodeResponse(text=text)

    async def DecodeBatch(self, request, context):
        tokenizer = self._for(request.model).tokenizer
        with self.metrics.operation("decode") as op:
            texts = tokenizer.decode_batch([item.ids for item in request.items], request.skip_special_tokens)
            op.tokens = sum(len(item.ids) for item in request.items)
        return tokenizer_pb2.DecodeBatchResponse(texts=texts)

    async def DecodeStream(self, request_iterator, context):
        # One answer per request (possibly ""), so a client can await the text
        # for each token it sends; one more with the held-back rest at the end.
        # Each request is one decode operation (the stream lives as long as a generation).
        decoder = None  # the first message names the model
        async for request in request_iterator:
            decoder = decoder or IncrementalDecoder(self._for(request.model).tokenizer)
            with self.metrics.operation("decode") as op:
                text = decoder.push(request.ids)
                op.tokens = len(request.ids)
            yield tokenizer_pb2.DecodeResponse(text=text)
        yield tokenizer_pb2.DecodeResponse(text=decoder.flush() if decoder else "")

    async def GetTokenBytes(self, request, context):
        loaded = self._for(request.model)
        with self.metrics.operation("table"):  # no tokens: the table is the vocabulary, not a text's
            if loaded.token_bytes is None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the tokenizer is not byte-level: use DecodeStream")
        return tokenizer_pb2.TokenBytes(tokens=loaded.token_bytes)

    async def Info(self, request, context):
        tokenizer = self._for(request.model).tokenizer
        return tokenizer_pb2.TokenizerInfo(
            source=tokenizer.source,
            vocab_size=tokenizer.vocab_size,
            eos_token_id=tokenizer.eos_token_id,
        )


class TokenizerModelsError(ValueError):
    """SPLITGPT_TOKENIZER_MODELS cannot be read."""


def parse_models(text: str) -> dict[str, str]:
    """`name=MODEL,name=MODEL` -> {name: MODEL}; a name may itself hold `=`-free text, MODEL anything."""
    models = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, model = item.partition("=")
        if not sep or not name or not model:
            raise TokenizerModelsError(f"SPLITGPT_TOKENIZER_MODELS: {item!r} is not name=MODEL")
        models[name] = model
    return models


def load(model_id: str) -> LoadedTokenizer:
    tokenizer = load_tokenizer(model_id)
    return LoadedTokenizer(tokenizer, tokenizer.token_bytes())  # 50k tokens: ~0.1 s


async def start(settings: TokenizerSettings) -> GrpcServer:
    """Bind first (a taken port fails before any loading), load, then serve."""
    server = GrpcServer(SERVICE_NAME, settings.host, settings.port, InternalSecurity.from_settings(settings))
    metrics = TokenizerMetrics()
    metrics_server = serve_metrics(metrics.registry, settings.metrics_host or settings.host, settings.metrics_port, "tokenizer")
    if metrics_server is not None:
        server.on_stop.append(metrics_server.close)
    # Reading the files, or timing out on the Hub, must not stall the loop.
    wanted = parse_models(settings.models)  # before any loading: a typo fails at once
    default = await asyncio.to_thread(load, settings.model_id)
    models = None
    if wanted:
        by_source: dict[str, LoadedTokenizer] = {settings.model_id: default}
        models = {}
        for name, model_id in wanted.items():
            if model_id not in by_source:  # one load per checkpoint, however many names
                by_source[model_id] = await asyncio.to_thread(load, model_id)
            models[name] = by_source[model_id]
        log.info("tokenizers for models: %s", ", ".join(f"{n} ({m.tokenizer.source})" for n, m in models.items()))
    servicer = TokenizerServicer(default.tokenizer, default.token_bytes, metrics, models)
    server.add(tokenizer_pb2_grpc.add_TokenizerServicer_to_server, servicer)
    await server.start()
    await server.set_serving(True)
    log.info("tokenizer serving on %s:%d, vocabulary from %s", settings.host, server.port, default.tokenizer.source)
    return server


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_cli(TokenizerSettings, argv, "splitgpt tokenizer", "Serve GPT-2 tokenization.")
    configure(settings.log_level)

    async def run() -> None:
        server = await start(settings)
        await server.run_until_signal()

    try:
        asyncio.run(run())
    except (InternalSecurityError, MetricsPortError, TokenizerModelsError) as exc:
        log.error("tokenizer cannot start: %s", exc)
        raise SystemExit(2) from None
