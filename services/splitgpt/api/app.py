"""FastAPI routes: thin over GenerationService and the backends."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..host_allow import HostAllowList, allowed_hosts
from .auth import install_api_keys
from .backends import Backends
from .body_limit import BodyLimit
from .cache import make_cache
from .cache_security import redis_password, result_cache_secret
from .cors import Cors
from .deps import BackendsDep, Generation, JsonBody, RequestId
from .deps import request_id as _request_id
from .disconnect import unless_disconnected
from .error_handlers import error_responses, install_error_handlers
from .errors import ApiError
from .fan_out import FanOut
from .generation import GenerationService
from .management_routes import management_router
from .metrics import ApiMetrics, ErrorAnswers, GenerationRequestMetrics
from .multi_model_routes import multi_model_router
from .offline_docs import install_offline_docs
from .openai.routes import openai_router
from .rate_limit import GenerationLimits
from .readiness import readiness
from .schemas import (
    CancelResponse,
    ClusterResponse,
    HealthResponse,
    ProcessRequest,
    ProcessResponse,
    ReadyResponse,
    TasksResponse,
    sse_event_schema,
)
from .settings import ApiSettings
from .shutdown import drain
from .sse import generation_events

log = logging.getLogger("splitgpt.api")


def create_app(settings: ApiSettings) -> FastAPI:
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        backends = Backends(settings)
        cache = make_cache(
            settings.redis_url,
            settings.cache_max_entries,
            settings.cache_ttl_s,
            result_cache_secret(settings),
            settings.redis_username,
            redis_password(settings),
        )
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
        docs_url=None,  # offline_docs serves /docs and /redoc without a CDN
        redoc_url=None,
    )
    install_offline_docs(app)
    # Added first, so innermost: a 413 still passes CORS and the request metrics on its way out.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # Limits inside the key check (they count per key), both inside CORS (a browser can read a 401/429, and a
    # preflight, which carries no key, is answered before them) and before the body is read.
    app.add_middleware(
        GenerationLimits,
        per_min=settings.rate_limit_per_min,
        burst=settings.rate_limit_burst,
        max_concurrent=settings.max_concurrent_per_key,
    )
    keys = install_api_keys(app, settings)
    app.add_middleware(Cors, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"])
    app.state.metrics = metrics

    app.add_middleware(GenerationRequestMetrics, metrics=metrics)
    # Outermost: every error answer passes it, whichever layer answered.
    app.add_middleware(ErrorAnswers, metrics=metrics)
    # Before anything else, a request to a name this gateway does not answer (DNS rebinding).
    app.add_middleware(
        HostAllowList,
        allowed=allowed_hosts(settings.allowed_hosts, settings.host, keys=len(keys) > 0),
        setting="SPLITGPT_API_ALLOWED_HOSTS",
    )

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    install_error_handlers(app)
    # Any route can meet a body over the limit, or a bug.
    app.include_router(_routes(), responses=error_responses(413, 500))
    app.include_router(management_router(), responses=error_responses(413, 500))
    # The OpenAI-compatible API: its errors in OpenAI's shape (api/openai/errors.py).
    fan_out = FanOut(settings.max_prompts_per_request, settings.max_generations_per_request)
    app.include_router(openai_router(settings.served_model_name, fan_out))
    app.include_router(multi_model_router(fan_out), responses=error_responses(413, 500))
    return app


# What a generation request can be refused with (besides 413/500, on every route).
GENERATION_ERRORS = error_responses(400, 415, 422, 429, 502, 503, 504)
COORDINATOR_ERRORS = error_responses(502, 503, 504)
SSE_RESPONSE = {
    "description": "Server-sent events: `token` per token, then `done` (the whole response), or `error` "
    "(the one error shape) if the generation fails after the status line.",
    "content": {"text/event-stream": {"schema": sse_event_schema()}},
}


def _routes() -> APIRouter:
    router = APIRouter()

    @router.post(
        "/api/model/process", response_model=ProcessResponse, tags=["model"], dependencies=[JsonBody], responses=GENERATION_ERRORS
    )
    async def process(
        body: ProcessRequest, generation: Generation, request: Request, x_request_id: RequestId = None
    ) -> ProcessResponse:
        """Generate a completion for `text` and return it whole."""
        return await unless_disconnected(request, generation.process(body, _request_id(x_request_id)))

    @router.post(
        "/api/model/stream",
        tags=["model"],
        response_class=StreamingResponse,
        dependencies=[JsonBody],
        responses={200: SSE_RESPONSE, **GENERATION_ERRORS},
    )
    async def stream(body: ProcessRequest, generation: Generation, request: Request, x_request_id: RequestId = None):
        """The same as /api/model/process, as server-sent events: one `token` event per token, then one
        `done` with the whole response; a failure after the 200 status line arrives as an `error` event."""
        events = drain.cut_stream(generation.stream(body, _request_id(x_request_id)))
        # Pull the first event before answering, so a request the cluster
        # refuses gets its 4xx/5xx status instead of a 200 stream; a client
        # that leaves before it ends the generation at once.
        first = await unless_disconnected(request, anext(events))
        return StreamingResponse(
            generation_events(first, events, generation.metrics),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    @router.get("/api/health", tags=["ops"], response_model=HealthResponse)
    async def health() -> HealthResponse:
        """The gateway process is alive."""
        return HealthResponse(status="ok")

    @router.get(
        "/api/ready",
        tags=["ops"],
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "Not ready: `error` says what is missing."}},
    )
    async def ready(backends: BackendsDep) -> JSONResponse:
        """200 only when the tokenizer, the coordinator and every partition can serve."""
        state = await readiness(backends)
        return JSONResponse(state.model_dump(exclude_none=True), status_code=200 if state.ready else 503)

    @router.get("/api/cluster", tags=["ops"], response_model=ClusterResponse, responses=COORDINATOR_ERRORS)
    async def cluster(backends: BackendsDep) -> ClusterResponse:
        """Every node (replica): its partition, blocks, health, circuit, load and step latency."""
        return await backends.cluster()

    @router.get("/api/tasks", tags=["ops"], response_model=TasksResponse, responses=COORDINATOR_ERRORS)
    async def tasks(backends: BackendsDep) -> TasksResponse:
        """Requests generating now: id, tokens so far, age, the chain of replicas. With API keys: the
        caller's own requests (an admin key: every request, other keys' as `OWNER:ID`)."""
        return await backends.tasks()

    @router.delete(
        "/api/tasks/{request_id}",
        tags=["ops"],
        response_model=CancelResponse,
        responses={**error_responses(404, 422), **COORDINATOR_ERRORS},
    )
    async def cancel_task(request_id: str, backends: BackendsDep) -> CancelResponse:
        """Cancel a running request: its stream ends with finish_reason "cancelled". With API keys,
        another key's request answers 404, as one not running (an admin key cancels any)."""
        if not await backends.cancel_task(request_id):
            raise ApiError(404, "not_found", "no running request has this id", param="request_id")
        return CancelResponse(request_id=request_id, cancelled=True)

    return router
