"""A generation as server-sent events: what /api/model/stream and a streamed parallel race send.

`token` per token, then `done` with the whole response; a failure after the 200
status line (when no status can say it any more) travels as a last `error` event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from .cached_result import TextDelta
from .errors import ApiError
from .generation import Done
from .metrics import ApiMetrics


def sse_event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def generation_events(
    first: TextDelta | Done, rest: AsyncIterator[TextDelta | Done], metrics: ApiMetrics
) -> AsyncIterator[str]:
    """`first` (already pulled, so a refusal had its status line) and then `rest`, as events;
    `rest` is closed at the end, however it ends (a client gone cancels its generation)."""

    async def all_events():
        yield first
        async for event in rest:
            yield event

    try:
        async for event in all_events():
            if isinstance(event, TextDelta):
                yield sse_event("token", {"text": event.text, "token_id": event.token_id, "index": event.index})
            else:
                yield sse_event("done", event.response.model_dump())
    except ApiError as exc:  # the status line is gone: the error travels as an event
        metrics.error(exc.type)
        yield sse_event("error", exc.body())
    finally:
        await rest.aclose()
