"""The tokenizer's metrics (docs/metrics.md, Tokenizer): calls, latency, tokens and failures by `op`.

`op` is what a call does, not its RPC: encode (Encode, EncodeBatch), decode
(Decode, DecodeBatch, and each message of DecodeStream) and table (GetTokenBytes).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram

from .metrics_http import process_registry

OPS = ("encode", "decode", "table")
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class _Operation:
    """One call: `with metrics.operation("encode") as op: ...; op.tokens = n`."""

    __slots__ = ("_calls", "_errors", "_seconds", "_started", "_tokens", "tokens")

    def __init__(self, calls, seconds, tokens, errors) -> None:
        self._calls, self._seconds, self._tokens, self._errors = calls, seconds, tokens, errors
        self.tokens = 0
        self._started = 0.0

    def __enter__(self) -> _Operation:
        self._started = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._seconds.observe(time.perf_counter() - self._started)
        self._calls.inc()
        if exc_type is not None:
            self._errors.inc()
        elif self.tokens:
            self._tokens.inc(self.tokens)


class TokenizerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else process_registry("tokenizer")
        r = self.registry
        calls = Counter("splitgpt_tokenizer_operations_total", "Tokenizer calls by operation", ["op"], registry=r)
        seconds = Histogram("splitgpt_tokenizer_operation_duration_seconds", "Tokenizer call latency by operation", ["op"],
                            buckets=BUCKETS, registry=r)  # fmt: skip
        tokens = Counter("splitgpt_tokenizer_tokens_total", "Tokens produced (encode) or consumed (decode)", ["op"], registry=r)
        errors = Counter("splitgpt_tokenizer_errors_total", "Tokenizer calls that failed, by operation", ["op"], registry=r)
        # Every op's series exists from the start (a zero, not an absent series, before the first call).
        self._children = {op: (calls.labels(op), seconds.labels(op), tokens.labels(op), errors.labels(op)) for op in OPS}

    def operation(self, op: str) -> _Operation:
        return _Operation(*self._children[op])
