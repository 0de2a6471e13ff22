"""The gateway's drain (api/shutdown.py): work within the grace finishes, the rest ends as ShuttingDown."""

from __future__ import annotations

import asyncio

import pytest

from splitgpt.api.shutdown import Drain, ShuttingDown


async def tokens(count: int, every_s: float, log: list[str]):
    try:
        for i in range(count):
            await asyncio.sleep(every_s)
            yield i
    finally:  # what a real stream does here: cancel its coordinator call
        log.append("closed")


async def test_a_stream_runs_through_the_grace_then_ends_as_shutting_down():
    drain, log, got = Drain(), [], []
    loop = asyncio.get_running_loop()

    async def consume():
        async for token in drain.cut_stream(tokens(10_000, 0.01, log)):
            got.append(token)
            if len(got) == 5:
                drain.begin(0.3)

    began = loop.time()
    with pytest.raises(ShuttingDown) as caught:
        await consume()
    assert 0.25 < loop.time() - began - 5 * 0.01 < 1.0
    assert len(got) > 10  # it kept streaming during the grace
    assert log == ["closed"]  # and its own clean-up ran
    assert caught.value.status == 503 and caught.value.body()["error"]["type"] == "shutting_down"
    assert caught.value.headers() == {"Retry-After": "1"}


async def test_work_that_ends_within_the_grace_is_untouched():
    drain, log = Drain(), []

    async def short():
        await asyncio.sleep(0.1)
        return "done"

    work = asyncio.ensure_future(drain.cut(short()))
    await asyncio.sleep(0)
    drain.begin(1.0)
    assert await work == "done"
    assert [t async for t in drain.cut_stream(tokens(3, 0.01, log))] == [0, 1, 2]  # a stream that ends in time
    assert log == ["closed"]


async def test_work_past_the_grace_is_cancelled_and_answers_shutting_down():
    drain, seen = Drain(), []

    async def long():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    work = asyncio.ensure_future(drain.cut(long()))
    await asyncio.sleep(0.05)
    drain.begin(0.1)
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(work, 2)
    assert seen == ["cancelled"]


async def test_work_that_starts_while_draining_gets_what_is_left_of_the_grace():
    drain = Drain()
    drain.begin(0.2)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(ShuttingDown):
        await drain.cut(asyncio.sleep(60))
    assert loop.time() - began < 1.0


async def test_a_timeout_of_the_work_itself_is_not_a_shutdown():
    drain = Drain()

    async def times_out():
        async with asyncio.timeout(0.05):
            await asyncio.sleep(60)

    with pytest.raises(TimeoutError):
        await drain.cut(times_out())
    drain.begin(5.0)  # and a later stop does not touch finished work
