"""One request through the gateway: tokenize, generate, detokenize, stop, cache."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from ..core.cache_keys import result_key
from ..core.stop_strings import StopMatcher
from ..rpc import common_pb2, coordinator_pb2
from .backends import Backends
from .cache import ResultCache
from .errors import ApiError, from_grpc
from .metrics import ApiMetrics
from .schemas import PartitionTimingOut, ProcessRequest, ProcessResponse, Timings, Usage


@dataclass(frozen=True)
class TextDelta:
    text: str
    token_id: int
    index: int


@dataclass(frozen=True)
class Done:
    response: ProcessResponse


@dataclass
class _Run:
    body: ProcessRequest
    request_id: str
    model: coordinator_pb2.ModelInfo
    prompt_ids: list[int]
    started: float
    tokenize_ms: float
    cache_key: str | None
    partition_ms: dict[tuple[int, str], float] = field(default_factory=dict)


class GenerationService:
    def __init__(self, backends: Backends, cache: ResultCache, metrics: ApiMetrics) -> None:
        self.backends = backends
        self.cache = cache
        self.metrics = metrics

    async def process(self, body: ProcessRequest, request_id: str) -> ProcessResponse:
        done = None
        async for event in self.stream(body, request_id):
            if isinstance(event, Done):
                done = event
        assert done is not None
        return done.response

    async def stream(self, body: ProcessRequest, request_id: str) -> AsyncIterator[TextDelta | Done]:
        """Text deltas as tokens arrive, then Done with the whole response.

        Everything that can reject the request (validation, a full context, an
        unavailable cluster) is raised before the first event.
        """
        run = await self._prepare(body, request_id)
        if run.cache_key is not None:
            errors = self.cache.errors
            hit = await self.cache.get(run.cache_key)
            self.metrics.cache.labels("error" if self.cache.errors > errors else ("hit" if hit else "miss")).inc()
            if hit is not None:
                response = self._cached_response(run, hit)
                yield TextDelta(response.generated_text, -1, 0)
                yield Done(response)
                return
        async for event in self._generate(run):
            yield event

    async def _prepare(self, body: ProcessRequest, request_id: str) -> _Run:
        started = time.perf_counter()
        model = await self.backends.model_info()
        if body.max_tokens > model.n_ctx:
            raise ApiError(
                422, "validation_error", f"max_tokens must be at most the model's context of {model.n_ctx}", param="max_tokens"
            )
        if body.min_tokens > body.max_tokens:
            raise ApiError(422, "validation_error", "min_tokens must not exceed max_tokens", param="min_tokens")
        t0 = time.perf_counter()
        prompt_ids = await self.backends.encode(body.text)
        tokenize_ms = (time.perf_counter() - t0) * 1000
        excess = len(prompt_ids) + body.max_tokens - model.n_ctx
        if excess > 0:
            raise ApiError(
                400,
                "context_length_exceeded",
                f"the prompt is {len(prompt_ids)} tokens and max_tokens is {body.max_tokens}: together they exceed "
                f"the model's context of {model.n_ctx} tokens by {excess}. Shorten the prompt or lower max_tokens "
                f"to at most {max(model.n_ctx - len(prompt_ids), 0)}.",
                param="max_tokens",
            )
        key = None
        if body.deterministic:
            params = body.model_dump(exclude={"text", "metadata"})
            key = result_key(model.model_id, body.text, params)
        return _Run(body, request_id, model, prompt_ids, started, tokenize_ms, key)

    async def _generate(self, run: _Run) -> AsyncIterator[TextDelta | Done]:
        body = run.body
        sampling = common_pb2.SamplingParams(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, seed=body.seed)
        call = self.backends.generate(
            coordinator_pb2.GenerateRequest(
                request_id=run.request_id,
                prompt_ids=run.prompt_ids,
                max_tokens=body.max_tokens,
                min_tokens=body.min_tokens,
                sampling=sampling,
                ignore_eos=body.ignore_eos,
            )
        )
        decoder = await self.backends.decode_stream()
        stopper = StopMatcher(body.stop)
        text: list[str] = []
        finish: coordinator_pb2.FinishEvent | None = None
        completion_tokens = 0
        t0 = last_token_at = time.perf_counter()
        try:
            async for event in call:
                if event.HasField("finish"):
                    finish = event.finish
                    break
                token = event.token
                completion_tokens += 1
                now = time.perf_counter()
                if completion_tokens == 1:
                    self.metrics.ttft.observe(now - run.started)
                else:
                    self.metrics.itl.observe(now - last_token_at)
                last_token_at = now
                self.metrics.generated_tokens.inc()
                for t in token.partitions:
                    self.metrics.partition_step.labels(str(t.partition)).observe(t.ms / 1000)
                    k = (t.partition, t.node_id)
                    run.partition_ms[k] = run.partition_ms.get(k, 0.0) + t.ms
                piece = stopper.push(await decoder.push([token.token_id]))
                text.append(piece)
                # One event per token, even when its text is held back (half a
                # UTF-8 character, a possible stop string): clients count tokens.
                yield TextDelta(piece, token.token_id, token.index)
                if stopper.stopped:
                    break
            if not stopper.stopped:
                tail = stopper.push(await decoder.flush()) + stopper.flush()
                if tail:
                    text.append(tail)
                    yield TextDelta(tail, -1, completion_tokens)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, "coordinator") from exc
        finally:
            call.cancel()  # a stop string or a client gone: the coordinator frees the caches
            decoder.cancel()
        inference_ms = (time.perf_counter() - t0) * 1000
        reason = "stop" if stopper.stopped else (finish.finish_reason if finish else "length")
        response = ProcessResponse(
            generated_text="".join(text),
            finish_reason=reason,
            usage=Usage(prompt_tokens=len(run.prompt_ids), completion_tokens=completion_tokens),
            cached=False,
            timings=Timings(
                total_ms=(time.perf_counter() - run.started) * 1000,
                tokenize_ms=run.tokenize_ms,
                inference_ms=inference_ms,
                partitions=self._partitions(run, finish),
            ),
            request_id=run.request_id,
            model=run.model.model_id,
            metadata=body.metadata,
        )
        if run.cache_key is not None and reason != "cancelled":  # a cut-short result is not the result
            await self.cache.set(run.cache_key, response.model_dump_json(exclude={"metadata", "request_id", "cached"}))
        yield Done(response)

    @staticmethod
    def _partitions(run: _Run, finish: coordinator_pb2.FinishEvent | None) -> list[PartitionTimingOut]:
        if finish is not None:  # the coordinator's sum includes the step that produced EOS
            return [PartitionTimingOut(partition=t.partition, node=t.node_id, ms=t.ms) for t in finish.partitions]
        return [PartitionTimingOut(partition=p, node=n, ms=ms) for (p, n), ms in sorted(run.partition_ms.items())]

    def _cached_response(self, run: _Run, stored: str) -> ProcessResponse:
        data = json.loads(stored)
        data.update(cached=True, request_id=run.request_id, metadata=run.body.metadata)
        data["timings"] = {
            "total_ms": (time.perf_counter() - run.started) * 1000,
            "tokenize_ms": run.tokenize_ms,
            "inference_ms": 0.0,
            "partitions": [],
        }
        return ProcessResponse.model_validate(data)
