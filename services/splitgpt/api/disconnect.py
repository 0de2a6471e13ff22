"""Work a client can abandon: a whole (non-streaming) answer, or a stream's first event.

A stream answers its status line only with its first event (so a refusal still gets its
4xx), and the prefill before it can take seconds, or wait in the queue far longer: a
client that leaves meanwhile ends the generation then, not when the first event comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from .errors import ApiError
from .shutdown import drain

T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`await work`, cut by the gateway's drain; a client that goes away cancels it
    (and so frees its generations' caches on every node)."""
    task = asyncio.ensure_future(drain.cut(work))
    while not task.done():
        await asyncio.wait([task], timeout=0.5)
        if not task.done() and await request.is_disconnected():
            task.cancel()
            # Until the cancellation has run its course: the coordinator call is closed (which
            # ends the generation on every node) before this request's slot is given back.
            await asyncio.wait([task], timeout=5)
            raise ApiError(499, "client_closed_request", "the client closed the connection")
    return task.result()
