"""Several generation runs as one stream, and the SSE framing OpenAI's clients read.

`merge` starts every run, waits for each one's first event (so a refused
request answers its error status, not a 200 stream), then yields (run,
event) as they come. Closing the merged stream closes every run, which cancels
its generation on every node.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import aclosing

from ..cached_result import TextDelta
from ..generation import Done

Event = TextDelta | Done
_END = object()


async def start(runs: list[AsyncIterator[Event]]) -> AsyncIterator[tuple[int, Event]]:
    """Every run's first event (raising the first failure, with every run closed),
    then the merged stream of the rest."""
    firsts = await asyncio.gather(*(anext(r) for r in runs), return_exceptions=True)
    failure = next((f for f in firsts if isinstance(f, BaseException)), None)
    if failure is not None:
        for r in runs:
            await r.aclose()
        raise failure
    return _merge(runs, firsts)


async def _merge(runs: list[AsyncIterator[Event]], firsts: list[Event]) -> AsyncIterator[tuple[int, Event]]:
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, run: AsyncIterator[Event]) -> None:
        try:
            async with aclosing(run):
                async for event in run:
                    await queue.put((i, event))
            await queue.put((i, _END))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - delivered to the consumer, which raises it
            await queue.put((i, exc))

    for i, first in enumerate(firsts):
        queue.put_nowait((i, first))
    tasks = [asyncio.ensure_future(pump(i, r)) for i, r in enumerate(runs)]
    running = len(runs)
    try:
        while running:
            i, event = await queue.get()
            if event is _END:
                running -= 1
            elif isinstance(event, BaseException):
                raise event
            else:
                yield i, event
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


DONE = sse("[DONE]")
