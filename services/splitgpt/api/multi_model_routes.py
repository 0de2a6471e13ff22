"""Routes across models: /api/model/parallel and /api/model/pipeline, thin over MultiModelService.

Each is charged one generation per model or stage against the key's limits
(api/rate_limit.py) before anything runs, and, like /api/model/process, ends
every generation it started when the client goes away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from .deps import Generation, JsonBody, RequestId
from .deps import request_id as _request_id
from .disconnect import unless_disconnected
from .error_handlers import error_responses
from .errors import ApiError
from .fan_out import FanOut
from .metrics import ApiMetrics
from .multi_model import FirstStream, MultiModelService
from .multi_model_schemas import (
    ParallelRequest,
    ParallelResponse,
    ParallelStreamStart,
    PipelineRequest,
    PipelineResponse,
    parallel_sse_schema,
)
from .rate_limit import charge_generations
from .shutdown import drain
from .sse import generation_events, sse_event

# What a request across models can be refused with (besides 413/500, on every route).
ERRORS = error_responses(400, 404, 415, 422, 429, 502, 503, 504)
PARALLEL_200 = {
    "description": 'JSON (aggregate "all": every result; "first": the winner\'s), or with `stream: true` '
    "server-sent events: `start` (the winner), `token` per token, then `done` (its whole response) or `error`.",
    "content": {"text/event-stream": {"schema": parallel_sse_schema()}},
}


def multi_model_router(fan_out: FanOut) -> APIRouter:
    """`fan_out`: the generations one request may ask for (its max_generations caps the models or stages)."""
    router = APIRouter(tags=["model"])

    @router.post(
        "/api/model/parallel",
        response_model=ParallelResponse,
        dependencies=[JsonBody],
        responses={200: PARALLEL_200, **ERRORS},
    )
    async def parallel(body: ParallelRequest, generation: Generation, request: Request, x_request_id: RequestId = None):
        """`text` on every model of `models` at once, with the same generation fields.

        `aggregate: "all"` answers once every model has finished: `results`, one per model
        in the order asked. `aggregate: "first"` answers with the first model to finish
        (its response, `index` its position in `models`) and cancels the others, listed
        in `cancelled`. Any model's failure fails the request (the others cancelled), its
        message saying which model (`models[i]`). Each model runs as request
        `{X-Request-ID}.m{i}`; the request counts as one generation per model against
        the key's limits.

        `stream: true` (with `aggregate: "first"` only; with "all" it is a 400): the models
        race to their first token. The model whose first token (or, for a cached result,
        its first replayed token) arrives first wins, and every other model is cancelled
        at that moment, before any of the winner's tokens is sent; the winner is then
        streamed to its end, whether or not another model would have finished sooner.
        Events: `start` (`{"model", "index", "cancelled"}`), then one `token` per token and
        `done` with the winner's whole response, as /api/model/stream sends them; a failure
        after the 200 status line is an `error` event.
        """
        _charge(request, fan_out, len(body.models), "models")
        service = MultiModelService(generation)
        rid = _request_id(x_request_id)
        if body.stream:
            race = await unless_disconnected(request, service.stream_first(body, rid))
            return StreamingResponse(
                _sse(race, generation.metrics), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return await unless_disconnected(request, service.parallel(body, rid))

    @router.post("/api/model/pipeline", response_model=PipelineResponse, dependencies=[JsonBody], responses=ERRORS)
    async def pipeline(
        body: PipelineRequest, generation: Generation, request: Request, x_request_id: RequestId = None
    ) -> PipelineResponse:
        """The stages in order, each on its own model with its own generation fields.

        A stage's prompt is its template with `{input}` (the body's `input`) and
        `{stage_N}` (the text stage N generated, N earlier than this stage) substituted;
        `{{` and `}}` are literal braces. Any other `{...}`, or a reference to this or a
        later stage, is a 422 naming the stage (`stages[i].prompt`), as is every model's
        check, before any stage runs. A stage that fails ends the pipeline with its error,
        the message prefixed with `stage i:`. Stage i runs as request `{X-Request-ID}.s{i}`;
        the request counts as one generation per stage against the key's limits.
        """
        _charge(request, fan_out, len(body.stages), "stages")
        service = MultiModelService(generation)
        return await unless_disconnected(request, service.pipeline(body, _request_id(x_request_id)))

    return router


def _charge(request: Request, fan_out: FanOut, generations: int, field: str) -> None:
    """One generation per model or stage against the key's limits (the middleware charged one)."""
    if generations > fan_out.max_generations:
        raise ApiError(
            400,
            "too_many_generations",
            f"{generations} {field} is {generations} generations: at most {fan_out.max_generations} a request",
            field,
        )
    try:
        charge_generations(request.scope, generations)
    except ApiError as exc:  # its `param` names /v1's field: here it is ours
        raise ApiError(exc.status, exc.type, exc.message, field if exc.param else None, exc.retry_after_s) from exc


async def _sse(race: FirstStream, metrics: ApiMetrics) -> AsyncIterator[str]:
    """`start` (the winner, the models cancelled), then the winner's events as /api/model/stream sends them."""
    rest = drain.cut_stream(race.rest)
    try:  # closed however this ends, a client gone after `start` included: that cancels the winner
        start = ParallelStreamStart(model=race.model, index=race.index, cancelled=race.cancelled)
        yield sse_event("start", start.model_dump())
        async for chunk in generation_events(race.first, rest, metrics):
            yield chunk
    finally:
        await rest.aclose()
