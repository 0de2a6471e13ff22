"""Concurrent streaming requests against the API, timed per token.

Metrics follow vLLM's benchmark_serving: TTFT is request start to first token;
TPOT is (end - first token) / (output tokens - 1) per request; ITL is every
gap between consecutive tokens; throughput is output tokens over the wall time
of the whole run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class RequestTiming:
    ok: bool
    start: float
    token_times: list[float] = field(default_factory=list)
    end: float = 0.0
    error: str = ""

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.start

    @property
    def tpot(self) -> float | None:
        n = len(self.token_times)
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n > 1 else None

    @property
    def itl(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.token_times)]


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> RequestTiming:
    timing = RequestTiming(ok=False, start=time.perf_counter())
    try:
        async with client.stream("POST", f"{url}/api/model/stream", json=body) as r:
            if r.status_code != 200:
                timing.error = f"HTTP {r.status_code}: {(await r.aread()).decode()[:200]}"
                return timing
            event = None
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "token":
                    if json.loads(line[6:])["token_id"] >= 0:
                        timing.token_times.append(time.perf_counter())
                elif line.startswith("data: ") and event == "error":
                    timing.error = line[6:]
                    return timing
        timing.ok = True
    except httpx.HTTPError as exc:
        timing.error = f"{type(exc).__name__}: {exc}"
    finally:
        timing.end = time.perf_counter()
    return timing


def prompt_of(i: int, words: int) -> str:
    # Distinct prompts (no cache hits) of a fixed token length: " w<i>" style words.
    vocab = ["alpha", "beta", "gamma", "delta", "omega", "river", "stone", "cloud", "green", "north"]
    return " ".join(vocab[(i * 7 + k * 3) % len(vocab)] for k in range(words)) + f" {i}"


async def run_load(
    url: str, concurrency: int, requests: int, max_tokens: int, prompt_words: int = 15, first_index: int = 0
) -> dict:
    """`requests` greedy requests, at most `concurrency` in flight, each exactly `max_tokens` long.

    Every prompt is distinct (`first_index` keeps runs apart), so none is served from the result cache.
    """
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def limited(i: int) -> RequestTiming:
            async with semaphore:
                body = {"text": prompt_of(first_index + i, prompt_words), "max_tokens": max_tokens, "ignore_eos": True}
                return await one_request(client, url, body)

        started = time.perf_counter()
        timings = await asyncio.gather(*(limited(i) for i in range(requests)))
        duration = time.perf_counter() - started
    return summarize(timings, duration, concurrency)


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summarize(timings: list[RequestTiming], duration: float, concurrency: int) -> dict:
    ok = [t for t in timings if t.ok and t.token_times]
    ttft = [t.ttft for t in ok]
    tpot = [v for t in ok if (v := t.tpot) is not None]
    itl = [g for t in ok for g in t.itl]
    out_tokens = sum(len(t.token_times) for t in ok)
    ms = lambda v: None if v is None else v * 1000  # noqa: E731
    return {
        "concurrency": concurrency,
        "requests": len(timings),
        "failed": len(timings) - len(ok),
        "errors": sorted({t.error for t in timings if not t.ok})[:5],
        "duration_s": duration,
        "output_tokens": out_tokens,
        "output_tokens_per_s": out_tokens / duration if duration else 0.0,
        "ttft_ms": {"mean": ms(statistics.fmean(ttft)) if ttft else None, "p50": ms(_pct(ttft, 50)), "p99": ms(_pct(ttft, 99))},
        "tpot_ms": {"mean": ms(statistics.fmean(tpot)) if tpot else None, "p50": ms(_pct(tpot, 50)), "p99": ms(_pct(tpot, 99))},
        "itl_ms": {"mean": ms(statistics.fmean(itl)) if itl else None, "p50": ms(_pct(itl, 50)), "p99": ms(_pct(itl, 99))},
    }
