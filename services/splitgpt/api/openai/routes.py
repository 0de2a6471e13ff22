"""/v1 routes: OpenAI's completions, chat completions and models, thin over OpenAIServing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..cached_result import TextDelta as TextDeltaType
from ..deps import Generation, JsonBody, RequestId
from ..deps import request_id as _request_id
from ..disconnect import unless_disconnected
from ..errors import ApiError
from ..fan_out import FanOut, prompt_count
from ..rate_limit import charge_generations
from ..shutdown import drain
from . import streaming
from .errors import PREFIX, openai_body
from .protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatResponseMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    OpenAIErrorResponse,
)
from .serving import Choice, OpenAIServing, finish_reason, usage

DESCRIPTIONS = {
    400: "A field is invalid or not supported (`param` names it), or the prompt does not fit the context.",
    404: "No such model (`code: model_not_found`) or route.",
    413: "The request body is over the gateway's size limit.",
    415: "The body is not sent as JSON.",
    429: "The coordinator's queue is full: retry after `Retry-After` seconds.",
    500: "A bug in the gateway (logged).",
    502: "The tokenizer or coordinator failed in a way it should not.",
    503: "A service or partition has no usable replica (with `Retry-After`).",
    504: "A deadline passed.",
}


def errors(*statuses: int) -> dict[int | str, dict]:
    return {s: {"model": OpenAIErrorResponse, "description": DESCRIPTIONS[s]} for s in statuses}


GENERATION_ERRORS = errors(400, 404, 413, 415, 429, 500, 502, 503, 504)


def _sse_response(model: type, what: str) -> dict:
    return {
        "description": f"`{what}` as JSON, or, with `stream: true`, server-sent events: `data: <chunk>` lines "
        'ending with `data: [DONE]` (a failure after the status line arrives as `data: {"error": ...}`).',
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "model": model,
    }


def openai_router(served_model_name: str | None, fan_out: FanOut) -> APIRouter:
    """`fan_out`: the generations one request may ask for, checked and charged to the
    key's limits before anything else (the model check included) runs."""
    router = APIRouter(prefix="/v1", tags=["openai"])

    def serving(generation) -> OpenAIServing:
        return OpenAIServing(generation, served_model_name)

    @router.get("/models", response_model=ModelList, responses=errors(500, 502, 503, 504))
    async def models(generation: Generation) -> ModelList:
        """Every served model, the default first, each with its partitions under `splitgpt`."""
        return ModelList(data=await serving(generation).model_cards())

    @router.get("/models/{model_id:path}", response_model=ModelCard, responses=errors(404, 500, 502, 503, 504))
    async def model(model_id: str, generation: Generation) -> ModelCard:
        """One model by id (or an alias of it)."""
        s = serving(generation)
        await s.check_model(model_id)
        return await s.model_card()

    @router.post(
        "/completions",
        response_model=CompletionResponse,
        dependencies=[JsonBody],
        responses={200: _sse_response(CompletionResponse, "CompletionResponse"), **GENERATION_ERRORS},
    )
    async def completions(body: CompletionRequest, generation: Generation, request: Request, x_request_id: RequestId = None):
        """OpenAI's (legacy) completions: prompts, n, logprobs, echo, stop, seed, stream."""
        charge_generations(request.scope, fan_out.generations(prompt_count(body.prompt), body.n))
        s = serving(generation)
        model = await s.check_model(body.model)
        rid = _request_id(x_request_id)
        choices = await s.completion_choices(body)
        created = int(time.time())
        cid = f"cmpl-{rid}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            runs = [drain.cut_stream(r) for r in s.runs(choices, rid, body.logprobs)]
            events = await unless_disconnected(request, streaming.start(runs))
            return _stream(_completion_chunks(s, choices, events, cid, created, model, body.logprobs, include_usage))
        await unless_disconnected(request, s.run_all(choices, rid, body.logprobs))
        return CompletionResponse(
            id=cid,
            created=created,
            model=model,
            choices=[await s.completion_choice(c, body.logprobs) for c in choices],
            usage=usage(choices),
        )

    @router.post(
        "/chat/completions",
        response_model=ChatCompletionResponse,
        dependencies=[JsonBody],
        responses={200: _sse_response(ChatCompletionResponse, "ChatCompletionResponse"), **GENERATION_ERRORS},
    )
    async def chat_completions(
        body: ChatCompletionRequest, generation: Generation, request: Request, x_request_id: RequestId = None
    ):
        """Chat over a plain GPT-2 template: a system message as the first line, then
        `User: ...` / `Assistant: ...` lines, ending in `Assistant:`; stops at "\\nUser:"."""
        charge_generations(request.scope, fan_out.generations(1, body.n))
        s = serving(generation)
        model = await s.check_model(body.model)
        rid = _request_id(x_request_id)
        choices = await s.chat_choices(body)
        created = int(time.time())
        cid = f"chatcmpl-{rid}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = await unless_disconnected(
                request, streaming.start([drain.cut_stream(r) for r in s.runs(choices, rid, None)])
            )
            return _stream(_chat_chunks(s, choices, events, cid, created, model, include_usage))
        await unless_disconnected(request, s.run_all(choices, rid, None))
        return ChatCompletionResponse(
            id=cid,
            created=created,
            model=model,
            choices=[
                ChatChoice(
                    index=c.index,
                    message=ChatResponseMessage(content="".join(d.text for d in c.deltas).lstrip()),
                    finish_reason=finish_reason(c.done),
                )
                for c in choices
            ],
            usage=usage(choices),
        )

    return router


def _stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _completion_chunks(
    s: OpenAIServing, choices: list[Choice], events, cid: str, created: int, model: str, logprobs: int | None, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(choice: CompletionChoice) -> str:
        body = CompletionResponse(id=cid, created=created, model=model, choices=[choice]).model_dump(mode="json")
        if not include_usage:
            body.pop("usage")
        return streaming.sse(body)

    offsets = {c.index: len(c.echo) for c in choices}
    try:
        for c in choices:
            if c.echo:
                yield chunk(CompletionChoice(index=c.index, text=c.echo))
        async for i, event in events:
            c = choices[i]
            if isinstance(event, TextDeltaType):
                c.deltas.append(event)
                lp = None
                if logprobs is not None and event.token_id >= 0:
                    lp = await s.logprobs([event], offsets[c.index])
                    offsets[c.index] += sum(len(t) for t in lp.tokens)
                if event.text or lp is not None:
                    yield chunk(CompletionChoice(index=c.index, text=event.text, logprobs=lp))
            else:
                c.done = event
                yield chunk(CompletionChoice(index=c.index, text="", finish_reason=finish_reason(event)))
        if include_usage:
            yield streaming.sse(
                CompletionResponse(id=cid, created=created, model=model, choices=[], usage=usage(choices)).model_dump(mode="json")
            )
    except ApiError as exc:  # the status line is gone: the error travels as a chunk
        s.generation.metrics.error(exc.type)
        yield streaming.sse(openai_body(exc, PREFIX + "/completions"))
    finally:
        await events.aclose()
    yield streaming.DONE


async def _chat_chunks(
    s: OpenAIServing, choices: list[Choice], events, cid: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(choice: ChatChunkChoice) -> str:
        body = ChatCompletionChunk(id=cid, created=created, model=model, choices=[choice]).model_dump(mode="json")
        if not include_usage:
            body.pop("usage")
        return streaming.sse(body)

    started: set[int] = set()
    try:
        for c in choices:
            yield chunk(ChatChunkChoice(index=c.index, delta=ChatDelta(role="assistant", content="")))
        async for i, event in events:
            c = choices[i]
            if isinstance(event, TextDeltaType):
                c.deltas.append(event)
                text = event.text
                if c.index not in started:  # the template leaves a space after "Assistant:"
                    text = text.lstrip()
                    if text:
                        started.add(c.index)
                if text:
                    yield chunk(ChatChunkChoice(index=c.index, delta=ChatDelta(content=text)))
            else:
                c.done = event
                yield chunk(ChatChunkChoice(index=c.index, delta=ChatDelta(), finish_reason=finish_reason(event)))
        if include_usage:
            yield streaming.sse(
                ChatCompletionChunk(id=cid, created=created, model=model, choices=[], usage=usage(choices)).model_dump(
                    mode="json"
                )
            )
    except ApiError as exc:
        s.generation.metrics.error(exc.type)
        yield streaming.sse(openai_body(exc, PREFIX + "/chat/completions"))
    finally:
        await events.aclose()
    yield streaming.DONE
