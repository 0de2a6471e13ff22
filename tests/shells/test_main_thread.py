"""The node's torch work on the main thread, its gRPC loop on another (shells.main_thread)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

from splitgpt.shells.main_thread import MainThreadExecutor, SignalRelay


def test_calls_run_in_order_on_the_serving_thread_and_errors_reach_the_caller():
    compute = MainThreadExecutor()
    seen: list[str] = []
    results: dict[str, object] = {}

    async def loop_side() -> None:
        loop = asyncio.get_running_loop()
        results["first"] = await loop.run_in_executor(compute, lambda: seen.append(threading.current_thread().name) or 1)
        results["second"] = await loop.run_in_executor(compute, lambda: seen.append(threading.current_thread().name) or 2)
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(compute, lambda: 1 / 0)

    def serve_loop() -> None:
        try:
            asyncio.run(loop_side())
        finally:
            compute.shutdown()

    other = threading.Thread(target=serve_loop, name="loop")
    other.start()
    compute.serve()  # returns once the loop's side shut it down
    other.join()
    assert results == {"first": 1, "second": 2}
    assert seen == [threading.current_thread().name] * 2


def test_a_signal_reaches_the_loop_that_attached_on_another_thread():
    relay = SignalRelay()
    previous = {sig: signal.getsignal(sig) for sig in SignalRelay.SIGNALS}
    relay.install()
    got: list[int] = []
    attached = threading.Event()

    async def wait_for_signal() -> None:
        loop = asyncio.get_running_loop()
        arrived = loop.create_future()
        relay.attach(loop, lambda sig: (got.append(sig), arrived.set_result(sig)))
        attached.set()
        await asyncio.wait_for(arrived, 10)

    other = threading.Thread(target=lambda: asyncio.run(wait_for_signal()))
    try:
        other.start()
        assert attached.wait(10)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this, the main thread
        other.join(10)
        assert got == [signal.SIGTERM]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
