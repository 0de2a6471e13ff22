"""A whole (non-streaming) answer that a client can abandon."""

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
            raise ApiError(499, "client_closed_request", "the client closed the connection")
    return task.result()
