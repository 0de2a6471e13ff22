"""What the result cache stores for one deterministic request, and reading it back.

The entry keeps every text delta as it was streamed (text, token id, index),
so a cache hit on /api/model/stream replays one `token` event per token, the
same events a live stream sends, and /api/model/process gets the same text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from .schemas import ProcessResponse

FORMAT = 2  # entries of an older format (no deltas) count as misses and are rewritten


@dataclass(frozen=True)
class TextDelta:
    text: str
    token_id: int  # -1 for text released at the end that no single token completed
    index: int
    # Only on a live run that asked for them (never stored in the cache):
    logprob: float | None = None  # the token's log-probability
    top_logprobs: tuple[tuple[int, float], ...] = ()  # the most likely (token id, log-probability), first first


@dataclass(frozen=True)
class CachedResult:
    response: ProcessResponse  # request_id, metadata, cached and timings are the new request's
    deltas: list[TextDelta]


def encode(response: ProcessResponse, deltas: list[TextDelta]) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "response": response.model_dump(mode="json", exclude={"metadata", "request_id", "cached"}),
            "deltas": [[d.text, d.token_id, d.index] for d in deltas],
        },
        ensure_ascii=False,
    )


def decode(stored: str, *, request_id: str, metadata: dict | None, timings: dict) -> CachedResult | None:
    """The entry as this request's response; None if it is not a complete entry of this format."""
    try:
        entry = json.loads(stored)
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            return None
        data = {**entry["response"], "cached": True, "request_id": request_id, "metadata": metadata, "timings": timings}
        response = ProcessResponse.model_validate(data)
        deltas = [TextDelta(str(text), int(token_id), int(index)) for text, token_id, index in entry["deltas"]]
    except (ValueError, KeyError, TypeError, ValidationError):
        return None  # corrupt or foreign: generate afresh
    return CachedResult(response, deltas)
