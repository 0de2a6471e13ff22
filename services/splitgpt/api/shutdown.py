"""How the gateway stops: running requests get a grace period, then end cleanly.

On SIGTERM/SIGINT uvicorn closes its listening sockets at once (new
connections are refused) and waits for the open ones. Its own backstop,
`timeout_graceful_shutdown`, cancels whatever is left: a stream cut that way
ends without a final event and the client cannot tell a stop from a crash.
So the first signal also starts `drain`'s clock, and the routes wrap their
work in `drain.cut` / `drain.cut_stream`: work still running when the grace
is over is cancelled where it waits (which cancels its coordinator call, so
the coordinator frees its caches) and becomes `ShuttingDown`, a 503 that an
SSE stream sends as its final `error` event.

One gateway runs per process and the signal is process-wide, hence the one
module-level `drain`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable
from types import FrameType
from typing import TypeVar

import uvicorn

from .errors import ApiError

log = logging.getLogger("splitgpt.api")
T = TypeVar("T")


class ShuttingDown(ApiError):
    def __init__(self) -> None:
        super().__init__(
            503,
            "shutting_down",
            "the gateway is shutting down and this request did not finish within its grace period; retry it",
            retry_after_s=1,
        )


class Drain:
    """When running requests must be over; None until a stop begins."""

    def __init__(self) -> None:
        self.deadline: float | None = None  # on the event loop's clock
        # The timeouts of the waits running now; a stop moves them to the deadline.
        self._waits: set[asyncio.Timeout] = set()

    def begin(self, grace_s: float) -> None:
        """Start the clock (on the event loop); later calls change nothing."""
        if self.deadline is not None:
            return
        self.deadline = asyncio.get_running_loop().time() + grace_s
        log.info("shutting down: %d request(s) running get %.1fs to finish", len(self._waits), grace_s)
        for wait in self._waits:
            wait.reschedule(self.deadline)

    async def cut(self, work: Awaitable[T]) -> T:
        """`await work`, or ShuttingDown once the grace is over."""
        async with _Watch(self):
            return await work

    async def cut_stream(self, events: AsyncIterator[T]) -> AsyncIterator[T]:
        """`events`, ended by ShuttingDown once the grace is over (and `events` closed)."""
        try:
            while True:
                # One timeout per event, not one task: this runs for every token.
                async with _Watch(self):
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        return
                yield event
        finally:
            await events.aclose()


class _Watch:
    """asyncio.timeout_at(deadline), registered so that `begin` can move it;
    its expiry (and only its own) becomes ShuttingDown."""

    __slots__ = ("drain", "timeout")

    def __init__(self, drain: Drain) -> None:
        self.drain = drain
        self.timeout = asyncio.timeout_at(drain.deadline)

    async def __aenter__(self) -> asyncio.Timeout:
        await self.timeout.__aenter__()
        self.drain._waits.add(self.timeout)
        return self.timeout

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        self.drain._waits.discard(self.timeout)
        try:
            await self.timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if self.timeout.expired():
                raise ShuttingDown() from None
            raise
        return False


drain = Drain()


class DrainingServer(uvicorn.Server):
    """uvicorn that starts `drain`'s clock on its first stop signal.

    uvicorn's own backstop is set a little later than the grace, for work
    that no route wraps (it cancels that work without a final word).
    """

    def __init__(self, config: uvicorn.Config, grace_s: float) -> None:
        config.timeout_graceful_shutdown = int(grace_s) + 2
        super().__init__(config)
        self.grace_s = grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            try:
                loop = asyncio.get_running_loop()  # the server's loop: signals run on its thread
            except RuntimeError:
                pass
            else:
                loop.call_soon_threadsafe(drain.begin, self.grace_s)
        elif sig == signal.SIGINT:
            log.info("second interrupt: stopping now")
        super().handle_exit(sig, frame)
