"""Requests across models, over GenerationService: one input on several models at once
(every result, or the first to finish), and pipelines whose stages feed each other.

Transport-free like GenerationService: each model's or stage's generation is a
GenerationService run on a ProcessRequest built from the body's own fields.
Everything a request can be refused for up front (a template, a model's name, a
setting its model's context cannot hold) is checked before any generation
starts. A run that is no longer wanted (a race lost, a sibling failed, the
client gone) is cancelled by cancelling its task or closing its event stream,
which cancels its coordinator call and frees its caches on every node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from . import context_limits
from .errors import ApiError
from .generation import Done, GenerationService, TextDelta
from .multi_model_schemas import (
    GENERATION_FIELD_NAMES,
    ParallelAllResponse,
    ParallelFirstResponse,
    ParallelRequest,
    ParallelTimings,
    PipelineRequest,
    PipelineResponse,
    PipelineStage,
    PipelineStageResult,
    PipelineTimings,
)
from .prompt_templates import parse_template, render
from .schemas import ModelInfo, ProcessRequest, ProcessResponse

T = TypeVar("T")
Event = TextDelta | Done

# ---------------------------------------------------------------- errors


def _in_model(i: int, exc: ApiError) -> ApiError:
    """`exc` of models[i]'s run, saying so."""
    param = f"models[{i}]" if exc.param in (None, "model") else exc.param
    return ApiError(exc.status, exc.type, f"models[{i}]: {exc.message}", param, exc.retry_after_s)


def _in_stage(i: int, exc: ApiError) -> ApiError:
    """`exc` of stage i's run, saying so; `param` as the pipeline's body names it."""
    field = {"text": "prompt", "prompt": "prompt"}.get(exc.param, exc.param) if exc.param else None
    param = f"stages[{i}].{field}" if field else f"stages[{i}]"
    return ApiError(exc.status, exc.type, f"stage {i}: {exc.message}", param, exc.retry_after_s)


async def _wrapped(work: Awaitable[T], wrap: Callable[[ApiError], ApiError]) -> T:
    try:
        return await work
    except ApiError as exc:
        raise wrap(exc) from exc


async def _wrapped_stream(events: AsyncIterator[Event], wrap: Callable[[ApiError], ApiError]) -> AsyncIterator[Event]:
    try:
        async for event in events:
            yield event
    except ApiError as exc:
        raise wrap(exc) from exc
    finally:
        await events.aclose()


async def _end(tasks: list[asyncio.Future]) -> None:
    """Cancel the tasks still running and wait until each has ended (its coordinator call closed);
    every outcome is collected, so no failure goes unretrieved."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------- the service


@dataclass
class FirstStream:
    """A parallel stream once its race is won: the winner's first event and the rest of its events."""

    model: str
    index: int
    cancelled: list[str]
    first: Event
    rest: AsyncIterator[Event]


class MultiModelService:
    def __init__(self, generation: GenerationService) -> None:
        self.generation = generation

    # -- parallel

    async def parallel(self, body: ParallelRequest, request_id: str) -> ParallelAllResponse | ParallelFirstResponse:
        """aggregate "all": every model's response, in the order asked. "first": the
        first model to finish (the others cancelled). Any model's failure fails the request."""
        started = time.perf_counter()
        runs, _ = await self._parallel_runs(body)
        tasks = [
            asyncio.ensure_future(_wrapped(self.generation.process(run, _model_id(request_id, i)), _wrap_model(i)))
            for i, run in enumerate(runs)
        ]
        try:
            if body.aggregate == "all":
                return await self._all(tasks, started)
            return await self._first(tasks, body.models)
        finally:
            await _end(tasks)

    async def _all(self, tasks: list[asyncio.Future], started: float) -> ParallelAllResponse:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        _raise_first_failure(tasks, done)
        return ParallelAllResponse(
            results=[t.result() for t in tasks], timings=ParallelTimings(total_ms=(time.perf_counter() - started) * 1000)
        )

    async def _first(self, tasks: list[asyncio.Future], names: list[str]) -> ParallelFirstResponse:
        # A run cancelled by its own id (DELETE /api/tasks/{id}) finishes too, but wins only if every run is.
        pending = set(tasks)
        first_finished: int | None = None
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            _raise_first_failure(tasks, done)
            finished = sorted(tasks.index(t) for t in done)
            first_finished = finished[0] if first_finished is None else first_finished
            winners = [i for i in finished if tasks[i].result().finish_reason != "cancelled"]
            if winners or not pending:
                winner = winners[0] if winners else first_finished
                break
        response: ProcessResponse = tasks[winner].result()
        return ParallelFirstResponse(
            **response.model_dump(), index=winner, cancelled=[n for i, n in enumerate(names) if i != winner]
        )

    async def stream_first(self, body: ParallelRequest, request_id: str) -> FirstStream:
        """The model that yields its first event first, with that event and the rest of its
        stream; every other model is cancelled then. A failure before that fails the request."""
        if body.aggregate != "first":
            raise ApiError(
                400,
                "unsupported",
                'stream: true is supported with aggregate "first" only: "all" answers once every model has '
                "finished (leave stream out, or ask for the first)",
                "stream",
            )
        runs, infos = await self._parallel_runs(body)
        streams = [
            _wrapped_stream(self.generation.stream(run, _model_id(request_id, i)), _wrap_model(i)) for i, run in enumerate(runs)
        ]
        nexts = {asyncio.ensure_future(anext(s)): i for i, s in enumerate(streams)}
        winner: int | None = None
        try:
            while winner is None:
                done, _ = await asyncio.wait(nexts, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=nexts.__getitem__):
                    if task.exception() is not None:
                        raise task.exception()
                winner = min(nexts[t] for t in done)
            first = next(t for t, i in nexts.items() if i == winner).result()
        finally:
            await _end(list(nexts))
            for i, s in enumerate(streams):
                if i != winner:
                    await s.aclose()
        return FirstStream(
            model=infos[winner].name or infos[winner].model_id,
            index=winner,
            cancelled=[n for i, n in enumerate(body.models) if i != winner],
            first=first,
            rest=streams[winner],
        )

    async def _parallel_runs(self, body: ParallelRequest) -> tuple[list[ProcessRequest], list[ModelInfo]]:
        """One ProcessRequest per model, and the models: each resolved, distinct, its context checked."""
        infos = await self._resolve(body.models, _wrap_model)
        seen: dict[str, int] = {}
        for i, info in enumerate(infos):
            _checked(body, info, _wrap_model(i))
            key = info.name or info.model_id
            if key in seen:
                raise ApiError(
                    422,
                    "validation_error",
                    f"models[{i}] and models[{seen[key]}] name the same model: each must be another",
                    "models",
                )
            seen[key] = i
        return [_process_request(body, body.text, name) for name in body.models], infos

    # -- pipeline

    async def pipeline(self, body: PipelineRequest, request_id: str) -> PipelineResponse:
        """Each stage in order on its template rendered with the input and the earlier stages'
        texts; a stage's failure ends the pipeline with that error, naming the stage."""
        started = time.perf_counter()
        templates = [parse_template(stage.prompt, i) for i, stage in enumerate(body.stages)]
        infos = await self._resolve([s.model for s in body.stages], _wrap_stage)
        for i, (stage, info) in enumerate(zip(body.stages, infos, strict=True)):
            _checked(stage, info, _wrap_stage(i))
        results: list[PipelineStageResult] = []
        stages_ms: list[float] = []
        texts: list[str] = []
        for i, stage in enumerate(body.stages):
            t0 = time.perf_counter()
            prompt = render(templates[i], body.input, texts, i)
            run = _process_request(stage, prompt, stage.model, stage=i)
            response = await _wrapped(self.generation.process(run, _stage_id(request_id, i)), _wrap_stage(i))
            stages_ms.append((time.perf_counter() - t0) * 1000)
            results.append(PipelineStageResult(**response.model_dump(), prompt=prompt))
            texts.append(response.generated_text)
            if response.finish_reason == "cancelled":  # cancelled by its own id: the pipeline ends there
                break
        return PipelineResponse(
            stages=results,
            output=texts[-1],
            timings=PipelineTimings(total_ms=(time.perf_counter() - started) * 1000, stages_ms=stages_ms),
        )

    async def _resolve(self, names: list[str | None], wrap: Callable[[int], Callable[[ApiError], ApiError]]) -> list[ModelInfo]:
        """Every model named (None: the default), or the first one's 404 model_not_found (or an
        unreachable coordinator's error), as `wrap` says where; all asked at once."""
        infos = await asyncio.gather(
            *(_wrapped(self.generation.backends.model_info(name), wrap(i)) for i, name in enumerate(names)),
            return_exceptions=True,
        )
        for info in infos:
            if isinstance(info, BaseException):
                raise info
        return list(infos)


def _checked(fields: ParallelRequest | PipelineStage, info: ModelInfo, wrap: Callable[[ApiError], ApiError]) -> None:
    """The settings `info`'s context holds (before any run starts: a 422 naming where)."""
    try:
        context_limits.check_settings(fields.max_tokens, fields.min_tokens, info)
    except ApiError as exc:
        raise wrap(exc) from exc


def _raise_first_failure(tasks: list[asyncio.Future], done: set[asyncio.Future]) -> None:
    """The failure of the earliest run (in the order asked) among those `done`, if any."""
    for task in tasks:
        if task in done and task.exception() is not None:
            raise task.exception()


def _wrap_model(i: int) -> Callable[[ApiError], ApiError]:
    return lambda exc: _in_model(i, exc)


def _wrap_stage(i: int) -> Callable[[ApiError], ApiError]:
    return lambda exc: _in_stage(i, exc)


def _model_id(request_id: str, i: int) -> str:
    """models[i]'s own request id (what /api/tasks lists and DELETE /api/tasks/{id} cancels)."""
    return f"{request_id}.m{i}"


def _stage_id(request_id: str, i: int) -> str:
    return f"{request_id}.s{i}"


def _process_request(fields: Any, text: str, model: str | None, stage: int | None = None) -> ProcessRequest:
    """The ProcessRequest of one model or stage: `fields`' generation fields, this text and model."""
    values = {**fields.model_dump(include=GENERATION_FIELD_NAMES), "text": text, "model": model}
    try:
        return ProcessRequest.model_validate(values)
    except ValidationError as exc:  # a rendered prompt ProcessRequest refuses: never a 500
        where = f"stage {stage}" if stage is not None else "the request"
        param = f"stages[{stage}].prompt" if stage is not None else "text"
        reason = exc.errors()[0].get("msg", "invalid") if exc.errors() else "invalid"
        raise ApiError(422, "validation_error", f"{where}: its prompt is not one a generation takes: {reason}", param) from exc
