"""One request through the gateway: check, tokenize, generate, detokenize, stop, cache.

Speaks core generation types (GenerationRequest in, TokenEvent/FinishEvent
out) and ApiError; protobuf and grpc stay behind Backends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..core.cache_keys import result_key
from ..core.generation_types import FinishEvent, GenerationRequest, SamplingSpec
from ..core.stop_strings import StopMatcher
from . import cached_result, context_limits
from .cache import ResultCache
from .cache_security import cache_scope
from .cached_result import TextDelta
from .errors import ApiError
from .metrics import ApiMetrics
from .schemas import ModelInfo, PartitionTimingOut, ProcessRequest, ProcessResponse, Timings, Usage

if TYPE_CHECKING:  # the gRPC clients; only their interface is used here
    from .backends import Backends

__all__ = ["Done", "GenerationService", "TextDelta"]


@dataclass(frozen=True)
class Done:
    response: ProcessResponse


@dataclass
class _Run:
    body: ProcessRequest
    request_id: str
    model: ModelInfo
    prompt_ids: list[int]
    started: float
    tokenize_ms: float
    cache_key: str | None
    logprobs: int | None = None  # None: none; n: each token's log-probability and its n most likely alternatives
    partition_ms: dict[tuple[int, str], float] = field(default_factory=dict)


class GenerationService:
    def __init__(self, backends: Backends, cache: ResultCache, metrics: ApiMetrics) -> None:
        self.backends = backends
        self.cache = cache
        self.metrics = metrics

    async def process(self, body: ProcessRequest, request_id: str) -> ProcessResponse:
        async with aclosing(self.stream(body, request_id)) as events:
            async for event in events:
                if isinstance(event, Done):
                    return event.response
        raise AssertionError("a generation ended without its Done event")

    async def stream(
        self, body: ProcessRequest, request_id: str, *, prompt_ids: list[int] | None = None, logprobs: int | None = None
    ) -> AsyncIterator[TextDelta | Done]:
        """Text deltas as tokens arrive (one per token), then Done with the whole response.

        Everything that can reject the request (validation, a full context, an
        unavailable cluster) is raised before the first event. A cache hit
        replays the stored deltas, so it streams like a live run.

        `prompt_ids`: the prompt as token ids (`body.text` is then only a label,
        not tokenized). `logprobs`: every delta of a token carries its
        log-probability and its `logprobs` most likely alternatives (such runs
        skip the cache, whose entries hold no log-probabilities).
        """
        run = await self._prepare(body, request_id, prompt_ids, logprobs)
        self.metrics.for_model(run.model.name).prompt_tokens.inc(len(run.prompt_ids))
        if run.cache_key is not None:
            hit = await self._lookup(run)
            if hit is not None:
                for delta in hit.deltas:
                    yield delta
                yield Done(hit.response)
                return
        async for event in self._generate(run):
            yield event

    async def _prepare(
        self, body: ProcessRequest, request_id: str, given_ids: list[int] | None = None, logprobs: int | None = None
    ) -> _Run:
        started = time.perf_counter()
        model = await self.backends.model_info(body.model)
        context_limits.check_settings(body.max_tokens, body.min_tokens, model)
        t0 = time.perf_counter()
        if given_ids is None:
            context_limits.check_prompt_chars(body.text, model, await self.backends.max_chars_per_token(model.name))
            prompt_ids = await self.backends.encode(body.text, model.name)
        else:
            prompt_ids = list(given_ids)
            bad = [t for t in prompt_ids if not 0 <= t < model.vocab_size]
            if not prompt_ids or bad:
                raise ApiError(
                    400, "invalid_prompt", f"prompt token ids must be in [0, {model.vocab_size}), at least one", param="prompt"
                )
        tokenize_ms = (time.perf_counter() - t0) * 1000
        context_limits.check_prompt_tokens(len(prompt_ids), body.max_tokens, model)
        key = None
        if body.deterministic and body.cache and logprobs is None:
            scope = cache_scope(body.cache_salt)
            # The model by name and checkpoint: two names for one checkpoint never share results.
            model_key = f"{model.name}\n{model.model_id}"
            if given_ids is None:
                key = result_key(model_key, body.text, body.sampling_key(), scope)
            else:  # "" is no text prompt (they are never empty): ids never share a text's key
                key = result_key(model_key, "", {**body.sampling_key(), "prompt_ids": prompt_ids}, scope)
        return _Run(body, request_id, model, prompt_ids, started, tokenize_ms, key, logprobs)

    async def _lookup(self, run: _Run) -> cached_result.CachedResult | None:
        errors, forged = self.cache.errors, self.cache.forgeries.count
        t0 = time.perf_counter()
        stored = await self.cache.get(run.cache_key)
        self.metrics.cache_duration.labels("get").observe(time.perf_counter() - t0)
        timings = {
            "total_ms": (time.perf_counter() - run.started) * 1000,
            "tokenize_ms": run.tokenize_ms,
            "inference_ms": 0.0,
            "partitions": [],
        }
        hit = None
        if stored is not None:
            hit = cached_result.decode(stored, request_id=run.request_id, metadata=run.body.metadata, timings=timings)
        if self.cache.errors > errors:
            result = "error"
        elif self.cache.forgeries.count > forged:
            result = "forged"
        else:
            result = "hit" if hit else "miss"
        self.metrics.for_model(run.model.name).cache[result].inc()
        return hit

    async def _generate(self, run: _Run) -> AsyncIterator[TextDelta | Done]:
        body = run.body
        request = GenerationRequest(
            request_id=run.request_id,
            prompt_ids=run.prompt_ids,
            max_tokens=body.max_tokens,
            min_tokens=body.min_tokens,
            sampling=SamplingSpec(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, seed=body.seed),
            ignore_eos=body.ignore_eos,
            model=run.model.name,
        )
        if run.logprobs:
            request = replace(request, sampling=replace(request.sampling, top_logprobs=run.logprobs))
        decoder = await self.backends.decode_stream(run.model.name)
        stopper = StopMatcher(body.stop)
        deltas: list[TextDelta] = []
        finish: FinishEvent | None = None
        completion_tokens = 0
        t0 = last_token_at = time.perf_counter()
        # Closing the event stream (a stop string, a client gone) cancels the
        # coordinator's call: it frees the sequence's caches on every node.
        try:
            async with aclosing(self.backends.generate(request)) as events:
                async for event in events:
                    if isinstance(event, FinishEvent):
                        finish = event
                        break
                    completion_tokens += 1
                    now = time.perf_counter()
                    if completion_tokens == 1:
                        self.metrics.for_model(run.model.name).ttft.observe(now - run.started)
                    else:
                        self.metrics.for_model(run.model.name).itl.observe(now - last_token_at)
                    last_token_at = now
                    self.metrics.for_model(run.model.name).generated_tokens.inc()
                    for t in event.partitions:
                        self.metrics.for_model(run.model.name).partition_step(t.partition).observe(t.ms / 1000)
                        k = (t.partition, t.node_id)
                        run.partition_ms[k] = run.partition_ms.get(k, 0.0) + t.ms
                    # One delta per token, even when its text is held back (half a
                    # UTF-8 character, a possible stop string): clients count tokens.
                    delta = TextDelta(stopper.push(await decoder.push([event.token_id])), event.token_id, event.index)
                    if run.logprobs is not None:
                        delta = replace(delta, logprob=event.logprob, top_logprobs=event.top_logprobs)
                    deltas.append(delta)
                    yield delta
                    if stopper.stopped:
                        break
            if not stopper.stopped:
                tail = stopper.push(await decoder.flush()) + stopper.flush()
                if tail:
                    deltas.append(delta := TextDelta(tail, -1, completion_tokens))
                    yield delta
        finally:
            decoder.cancel()
        inference_ms = (time.perf_counter() - t0) * 1000
        reason = "stop" if stopper.stopped else (finish.finish_reason if finish else "length")
        response = ProcessResponse(
            generated_text="".join(d.text for d in deltas),
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
            model=run.model.name or run.model.model_id,
            metadata=body.metadata,
        )
        if run.cache_key is not None and reason != "cancelled":  # a cut-short result is not the result
            t_set = time.perf_counter()
            await self.cache.set(run.cache_key, cached_result.encode(response, deltas))
            self.metrics.cache_duration.labels("set").observe(time.perf_counter() - t_set)
        yield Done(response)

    @staticmethod
    def _partitions(run: _Run, finish: FinishEvent | None) -> list[PartitionTimingOut]:
        if finish is not None:  # the coordinator's sum includes the step that produced EOS
            return [PartitionTimingOut(partition=t.partition, node=t.node_id, ms=t.ms) for t in finish.partitions]
        return [PartitionTimingOut(partition=p, node=n, ms=ms) for (p, n), ms in sorted(run.partition_ms.items())]
