"""Per-key limits on generations: a token bucket (generations a minute, with a burst) and a cap
on generations running at once. 429 with Retry-After, in the shape of the route asked.

The middleware charges a generation request one generation before its body is
read; a route whose body asks for more (/v1 with several prompts or n > 1)
charges the rest with `charge_generations` before it does any work, so one
request of 64 generations costs what 64 requests of one do.

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
from .errors import ApiError
from .ownership import current

GENERATION_PATHS = frozenset({"/api/model/process", "/api/model/stream", "/api/model/parallel", "/api/model/pipeline"})
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

    def take(self, client: str, cost: float = 1.0) -> float:
        """0 when `cost` tokens may go now (and are taken); else the seconds until they may
        (a cost over the burst never may: the caller checks it against `capacity`)."""
        now = self.clock()
        tokens, at = self._buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate_per_s)
        if tokens >= cost:
            self._buckets[client] = (tokens - cost, now)
            if len(self._buckets) > PRUNE_AT:
                self._prune(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (cost - tokens) / self.rate_per_s

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
            message = f"this key already has {self.max_concurrent} generation(s) running, its limit: wait for one to finish"
            await _too_many(path, "concurrency_limited", message, 1)(scope, receive, send)
            return
        if self.buckets is not None:
            wait_s = self.buckets.take(client)
            if wait_s > 0:
                per_min = self.buckets.rate_per_s * 60
                retry = max(1, math.ceil(wait_s))
                message = f"over this key's rate limit of {per_min:g} generations a minute: retry in {retry} s"
                await _too_many(path, "rate_limited", message, retry)(scope, receive, send)
                return
        self.running[client] = self.running.get(client, 0) + 1
        charge = _Charge(self, client)
        scope[CHARGE_SCOPE_KEY] = charge
        try:
            # To the stream's last byte: a running SSE stream counts as running.
            await self.app(scope, receive, send)
        finally:
            left = self.running[client] - 1 - charge.extra
            if left:
                self.running[client] = left
            else:
                del self.running[client]


CHARGE_SCOPE_KEY = "splitgpt.generation_charge"


class _Charge:
    """What one request has been charged beyond the middleware's one generation."""

    def __init__(self, limits: GenerationLimits, client: str) -> None:
        self.limits, self.client, self.extra = limits, client, 0

    def more(self, extra: int) -> None:
        """Charge `extra` generations more, or raise the 429 (or the 400 for a request that
        could never pass: more generations than the key's limit allows at all)."""
        limits, client = self.limits, self.client
        if extra <= 0:
            return
        asked = 1 + self.extra + extra
        cap = limits.max_concurrent
        if cap and asked > cap:
            raise ApiError(
                400, "over_concurrency_limit", f"{asked} generations in one request: this key may run {cap} at once", "n"
            )
        if cap and limits.running[client] + extra > cap:
            raise ApiError(
                429, "concurrency_limited",
                f"this key has {limits.running[client]} generation(s) running and asks for {extra} more: its limit is {cap}",
                retry_after_s=1,
            )  # fmt: skip
        if limits.buckets is not None:
            if asked > limits.buckets.capacity:
                raise ApiError(
                    400, "over_rate_limit",
                    f"{asked} generations in one request: this key's burst is {limits.buckets.capacity:g}", "n",
                )  # fmt: skip
            wait_s = limits.buckets.take(client, extra)
            if wait_s > 0:
                per_min = limits.buckets.rate_per_s * 60
                retry = max(1, math.ceil(wait_s))
                message = f"over this key's rate limit of {per_min:g} generations a minute: retry in {retry} s"
                raise ApiError(429, "rate_limited", message, retry_after_s=retry)
        limits.running[client] += extra
        self.extra += extra


def charge_generations(scope, generations: int) -> None:
    """Charge a request that asks for `generations` (the middleware charged one);
    nothing where the limits are off."""
    charge = scope.get(CHARGE_SCOPE_KEY)
    if charge is not None:
        charge.more(generations - 1)


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
