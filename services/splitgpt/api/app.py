"""FastAPI routes: thin over GenerationService and the backends."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .backends import Backends
from .cache import make_cache
from .errors import ApiError
from .generation import Done, GenerationService, TextDelta
from .metrics import ApiMetrics, GenerationRequestMetrics
from .schemas import ProcessRequest, ProcessResponse
from .settings import ApiSettings

log = logging.getLogger("splitgpt.api")


def create_app(settings: ApiSettings) -> FastAPI:
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        backends = Backends(settings)
        cache = make_cache(settings.redis_url, settings.cache_max_entries, settings.cache_ttl_s)
        app.state.backends = backends
        app.state.generation = GenerationService(backends, cache, metrics)
        yield
        await cache.close()
        await backends.close()

    app = FastAPI(
        title="splitgpt",
        description="GPT-2 served with its transformer blocks partitioned across gRPC nodes.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"])
    app.state.metrics = metrics

    app.add_middleware(GenerationRequestMetrics, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's detail list, plus one sentence naming what to fix.
        errors = exc.errors()
        first = errors[0] if errors else {}
        detail = json.loads(json.dumps(errors, default=str))
        if first.get("type") == "json_invalid":
            where = first.get("loc", ("body", "?"))[-1]
            reason = first.get("ctx", {}).get("error", "")
            message = f"the request body is not valid JSON ({reason} at character {where})"
            return JSONResponse({"error": {"type": "invalid_json", "message": message}, "detail": detail}, status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        message = f"{where}: {first.get('msg', 'invalid request')}"
        body = {"error": {"type": "validation_error", "message": message, "param": where}, "detail": detail}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {"error": {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}"}}
        return JSONResponse(body, status_code=500)

    app.include_router(_routes())
    return app


def _generation(request: Request) -> GenerationService:
    return request.app.state.generation


def _backends(request: Request) -> Backends:
    return request.app.state.backends


Generation = Annotated[GenerationService, Depends(_generation)]
BackendsDep = Annotated[Backends, Depends(_backends)]
RequestId = Annotated[str | None, Header(alias="X-Request-ID")]


def _request_id(given: str | None) -> str:
    return given if given and len(given) <= 128 else uuid.uuid4().hex


def _routes() -> APIRouter:
    router = APIRouter()

    @router.post("/api/model/process", response_model=ProcessResponse, tags=["model"])
    async def process(
        body: ProcessRequest, generation: Generation, request: Request, x_request_id: RequestId = None
    ) -> ProcessResponse:
        """Generate a completion for `text` and return it whole."""
        work = asyncio.ensure_future(generation.process(body, _request_id(x_request_id)))
        # A client that goes away cancels its generation (and so frees its caches on every node).
        while not work.done():
            await asyncio.wait([work], timeout=0.5)
            if not work.done() and await request.is_disconnected():
                work.cancel()
                raise ApiError(499, "client_closed_request", "the client closed the connection")
        return work.result()

    @router.post("/api/model/stream", tags=["model"], response_class=StreamingResponse)
    async def stream(body: ProcessRequest, generation: Generation, x_request_id: RequestId = None):
        """The same as /api/model/process, as server-sent events: `token` events, then one `done`."""
        events = generation.stream(body, _request_id(x_request_id))
        # Pull the first event before answering, so a request the cluster
        # refuses gets its 4xx/5xx status instead of a 200 stream.
        first = await anext(events)
        return StreamingResponse(_sse(first, events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @router.get("/api/health", tags=["ops"])
    async def health() -> dict:
        """The gateway process is alive."""
        return {"status": "ok"}

    @router.get("/api/ready", tags=["ops"])
    async def ready(backends: BackendsDep) -> JSONResponse:
        """200 only when the tokenizer, the coordinator and every partition can serve."""
        checks = await backends.readiness()
        partitions: dict[str, bool] = {}
        if checks["coordinator"] != "UNREACHABLE":
            try:
                cluster = await backends.cluster()
                for node in cluster.nodes:
                    key = str(node.partition)
                    partitions[key] = partitions.get(key, False) or node.status == "SERVING"
            except ApiError:
                pass
        ok = checks["tokenizer"] == "SERVING" and checks["coordinator"] == "SERVING" and bool(partitions) and all(partitions.values())
        body = {"ready": ok, "tokenizer": checks["tokenizer"], "coordinator": checks["coordinator"], "partitions": partitions}
        return JSONResponse(body, status_code=200 if ok else 503)

    @router.get("/api/cluster", tags=["ops"])
    async def cluster(backends: BackendsDep) -> dict:
        """Every node (replica): its partition, blocks, health, circuit, load and step latency."""
        state = await backends.cluster()
        return {
            "model": state.model_id,
            "nodes": [
                {
                    "id": n.id,
                    "address": n.address,
                    "partition": n.partition,
                    "layers": [n.start_block, n.end_block] if n.end_block else None,
                    "status": n.status,
                    "circuit": n.circuit,
                    "consecutive_failures": n.consecutive_failures,
                    "in_flight": n.in_flight,
                    "latency_ewma_ms": n.latency_ewma_ms if n.HasField("latency_ewma_ms") else None,
                }
                for n in state.nodes
            ],
        }

    @router.get("/api/tasks", tags=["ops"])
    async def tasks(backends: BackendsDep) -> dict:
        """Requests generating now: id, tokens so far, age, the chain of replicas."""
        listing = await backends.tasks()
        return {
            "tasks": [
                {
                    "request_id": t.request_id,
                    "state": t.state,
                    "prompt_tokens": t.prompt_tokens,
                    "generated_tokens": t.generated_tokens,
                    "max_tokens": t.max_tokens,
                    "age_s": round(t.age_s, 3),
                    "chain": list(t.chain),
                    "replays": t.replays,
                }
                for t in listing.tasks
            ]
        }

    @router.delete("/api/tasks/{request_id}", tags=["ops"])
    async def cancel_task(request_id: str, backends: BackendsDep) -> dict:
        """Cancel a running request: its stream ends with finish_reason "cancelled"."""
        if not await backends.cancel_task(request_id):
            raise ApiError(404, "not_found", f"no running request has id {request_id!r}", param="request_id")
        return {"request_id": request_id, "cancelled": True}

    return router


async def _sse(first: TextDelta | Done, rest: AsyncIterator[TextDelta | Done]) -> AsyncIterator[str]:
    async def all_events():
        yield first
        async for event in rest:
            yield event

    try:
        async for event in all_events():
            if isinstance(event, TextDelta):
                yield _event("token", {"text": event.text, "token_id": event.token_id, "index": event.index})
            else:
                yield _event("done", event.response.model_dump())
    except ApiError as exc:  # the status line is gone: the error travels as an event
        yield _event("error", exc.body())
    finally:
        await rest.aclose()


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
