"""Per-key limits on generation requests: a token bucket (requests a minute, with a burst) and a
cap on requests running at once. 429 with Retry-After, in the shape of the route asked.

State is in this process: with several gateway replicas each one limits on its
own (a key gets up to N times the rate across N replicas). Keys come from the
caller the auth middleware set; an open gateway limits per client address
(behind a proxy, such as `splitgpt ui`, every browser shares the proxy's).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .edge_errors import edge_error, is_openai_path
from .ownership import current

GENERATION_PATHS = frozenset({"/api/model/process", "/api/model/stream"})
# Buckets that have refilled are dropped once there are this many (open gateways see many addresses).
PRUNE_AT = 10_000


def is_generation(method: str, path: str) -> bool:
    """The routes that run the model: the REST ones, and every POST under /v1 (completions, chat)."""
    return method == "POST" and (path in GENERATION_PATHS or is_openai_path(path))


class TokenBuckets:
    """One bucket per client: `burst` tokens, refilled at `per_min` a minute; a request takes one."""

    def __init__(self, per_min: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = per_min / 60.0
        self.capacity = float(burst if burst > 0 else max(1, math.ceil(per_min)))
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def take(self, client: str) -> float:
        """0 when the request may go now (and takes its token); else the seconds until it may."""
        now = self.clock()
        tokens, at = self._buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate_per_s)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > PRUNE_AT:
                self._prune(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate_per_s

    def _prune(self, now: float) -> None:
        # A full bucket is the same as none.
        self._buckets = {c: (t, at) for c, (t, at) in self._buckets.items() if t + (now - at) * self.rate_per_s < self.capacity}


class GenerationLimits:
    """ASGI middleware, inside the auth middleware: the rate and concurrency limits of generation routes."""

    def __init__(self, app, per_min: float, burst: int, max_concurrent: int) -> None:
        self.app = app
        self.buckets = TokenBuckets(per_min, burst) if per_min > 0 else None
        self.max_concurrent = max_concurrent
        self.running: dict[str, int] = {}

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        off = self.buckets is None and not self.max_concurrent
        if off or scope["type"] != "http" or not is_generation(scope.get("method", ""), path):
            await self.app(scope, receive, send)
            return
        client = _client(scope)
        if self.max_concurrent and self.running.get(client, 0) >= self.max_concurrent:
            message = (
                f"this key already has {self.max_concurrent} generation request(s) running, its limit: wait for one to finish"
            )
            await _too_many(path, "concurrency_limited", message, 1)(scope, receive, send)
            return
        if self.buckets is not None:
            wait_s = self.buckets.take(client)
            if wait_s > 0:
                per_min = self.buckets.rate_per_s * 60
                retry = max(1, math.ceil(wait_s))
                message = f"over this key's rate limit of {per_min:g} generation requests a minute: retry in {retry} s"
                await _too_many(path, "rate_limited", message, retry)(scope, receive, send)
                return
        self.running[client] = self.running.get(client, 0) + 1
        try:
            # To the stream's last byte: a running SSE stream counts as running.
            await self.app(scope, receive, send)
        finally:
            left = self.running[client] - 1
            if left:
                self.running[client] = left
            else:
                del self.running[client]


def _client(scope) -> str:
    caller = current()
    if caller is not None:
        return "key:" + caller.owner
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


def _too_many(path: str, type_: str, message: str, retry_after_s: int):
    return edge_error(
        path, 429, type_, message,
        openai_type="requests", openai_code="rate_limit_exceeded", headers={"Retry-After": str(retry_after_s)},
    )  # fmt: skip
