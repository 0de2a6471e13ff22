"""Prometheus metrics of the gateway (`GET /metrics`; docs/metrics.md, API gateway).

Names follow Prometheus conventions: the `splitgpt_` prefix, base units,
`_total` on counters, histograms for latencies, low-cardinality labels. The
generation families carry `model`, the name the coordinator resolved the request
to (a model it serves: an unknown one is refused before anything is counted);
the HTTP request families do not (the endpoint is their label).
"""

from __future__ import annotations

import json
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from ..shells.metrics_http import process_registry
from .edge_errors import is_openai_path

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60, 120)
CACHE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
# Generation requests, counted and timed by endpoint.
GENERATION_ENDPOINTS = frozenset(
    {"/api/model/process", "/api/model/stream", "/api/model/parallel", "/api/model/pipeline", "/v1/completions",
     "/v1/chat/completions"}
)  # fmt: skip
CACHE_RESULTS = ("hit", "miss", "error", "forged")
# An error answer is one small JSON object; anything longer is not the error shape.
MAX_ERROR_BODY_BYTES = 64 * 1024


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else process_registry("api")
        r = self.registry
        self.requests = Counter(
            "splitgpt_requests_total", "Generation requests by endpoint and HTTP status", ["endpoint", "status"], registry=r
        )
        self.request_duration = Histogram(
            "splitgpt_request_duration_seconds", "End-to-end generation request time", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_progress = Gauge("splitgpt_requests_in_progress", "Generation requests being answered", ["endpoint"], registry=r)
        self.errors = Counter("splitgpt_errors_total", "Error answers by the error shape's type", ["type"], registry=r)
        self.generated_tokens = Counter("splitgpt_generated_tokens_total", "Tokens generated", ["model"], registry=r)
        self.prompt_tokens = Counter(
            "splitgpt_prompt_tokens_total", "Prompt tokens of generation requests", ["model"], registry=r
        )
        self.ttft = Histogram(
            "splitgpt_time_to_first_token_seconds", "Request start to its first token", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "splitgpt_inter_token_latency_seconds", "Gap between consecutive tokens of a request", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.partition_step = Histogram(
            "splitgpt_partition_step_seconds", "One step on one partition, as the coordinator timed it",
            ["partition", "model"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.cache = Counter("splitgpt_cache_lookups_total", "Result-cache lookups by result", ["result", "model"], registry=r)
        self.cache_duration = Histogram(
            "splitgpt_cache_operation_duration_seconds", "Result-cache latency (Redis or in-process)", ["op"],
            buckets=CACHE_BUCKETS, registry=r,
        )  # fmt: skip
        for endpoint in GENERATION_ENDPOINTS:  # a zero from the start, not an absent series
            self.in_progress.labels(endpoint)
        self._models: dict[str, ModelMetrics] = {}

    def for_model(self, name: str) -> ModelMetrics:
        """The generation series of the model served as `name` (a name the coordinator
        resolved, never a request's own), bound on its first request."""
        bound = self._models.get(name)
        if bound is None:
            bound = self._models[name] = ModelMetrics(self, name)
        return bound

    def error(self, type_: str) -> None:
        """An error answered inside a stream (after its 200), which `ErrorAnswers` cannot see."""
        self.errors.labels(type_).inc()


class ModelMetrics:
    """One model's generation series, bound once: a token costs no label lookup. Its
    cache results all exist from its first request (zeros, not absent series)."""

    def __init__(self, metrics: ApiMetrics, model: str) -> None:
        self.model = model
        self.generated_tokens = metrics.generated_tokens.labels(model)
        self.prompt_tokens = metrics.prompt_tokens.labels(model)
        self.ttft = metrics.ttft.labels(model)
        self.itl = metrics.itl.labels(model)
        self.cache = {result: metrics.cache.labels(result, model) for result in CACHE_RESULTS}
        self._partition_step = metrics.partition_step
        self._steps: dict[int, MetricWrapperBase] = {}

    def partition_step(self, partition: int) -> MetricWrapperBase:
        child = self._steps.get(partition)
        if child is None:
            child = self._steps[partition] = self._partition_step.labels(str(partition), self.model)
        return child


class GenerationRequestMetrics:
    """ASGI middleware: counts generation requests by status, times each to its
    last byte and counts those in progress.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which relays every
    chunk of a streaming response through an extra task and memory stream: at
    one SSE event per token that relay was a fifth of the gateway's CPU.
    """

    ENDPOINTS = GENERATION_ENDPOINTS

    def __init__(self, app, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        endpoint = scope.get("path")
        if scope["type"] != "http" or endpoint not in self.ENDPOINTS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = "500"  # if the app fails before it starts a response

        async def timed_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        in_progress = self.metrics.in_progress.labels(endpoint)
        in_progress.inc()
        try:
            await self.app(scope, receive, timed_send)
        finally:
            in_progress.dec()
            self.metrics.request_duration.labels(endpoint).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint, status).inc()


class ErrorAnswers:
    """ASGI middleware, outermost: counts every error answer (status >= 400 in the one
    error shape) by its `type`, whoever answered it (a route, an exception handler,
    the key check, the limits, the body limit, CORS).

    On /v1 the body is OpenAI's shape, whose `code` keeps the gateway's own type.
    Only error answers are read, never a successful one.
    """

    def __init__(self, app, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        openai = is_openai_path(scope.get("path", ""))
        body: bytearray | None = None

        async def watching_send(message) -> None:
            nonlocal body
            if message["type"] == "http.response.start":
                body = bytearray() if message["status"] >= 400 else None
            elif message["type"] == "http.response.body" and body is not None:
                body += message.get("body", b"")
                if len(body) > MAX_ERROR_BODY_BYTES:
                    body = None
                elif not message.get("more_body", False):
                    if (type_ := error_type(bytes(body), openai)) is not None:
                        self.metrics.errors.labels(type_).inc()
                    body = None
            await send(message)

        await self.app(scope, receive, watching_send)


def error_type(body: bytes, openai: bool) -> str | None:
    """The `type` of an answer in the error shape (`code` in OpenAI's), else None."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    if not isinstance(error, dict):
        return None
    kind = error.get("code") if openai and isinstance(error.get("code"), str) else error.get("type")
    return kind if isinstance(kind, str) and kind else None
