"""Torch work on the process's main thread, the gRPC server's loop on another.

Measured here: a [1, 768] x [768, 3072] product on two OpenMP threads took
7.2 ms (16 of them) started from the main thread and 10.7 ms started from any
other thread (a ThreadPoolExecutor worker or a plain thread alike; equal on
one thread), and a GPT-2-small partition's decode step 4.6 against 9.9 ms;
in the stack, a bf16 single stream went from 37 to 27 ms/token. (The cause,
somewhere in how OpenMP teams are kept per starting thread, was not pinned
down; the measurement decides.) So a node computes on its main thread, which
takes the calls the event loop hands it (`MainThreadExecutor`), and the loop
runs on a thread of its own; signals, which Python delivers to the main
thread, reach that loop through `SignalRelay`.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
from collections.abc import Callable
from concurrent.futures import Executor, Future


class MainThreadExecutor(Executor):
    """An executor whose one worker is the thread that calls `serve`."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def serve(self) -> None:
        """Run submitted calls, in order, until `shutdown`."""
        while (job := self._jobs.get()) is not None:
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # the caller's future carries it
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._jobs.put(None)


class SignalRelay:
    """SIGTERM and SIGINT caught on the main thread, handed to a loop on another.

    Until a loop attaches (the node is still starting), a signal does what it
    would do by default: the process ends at once, as a node stopped while
    loading always has.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self._target: tuple[asyncio.AbstractEventLoop, Callable[[int], None]] | None = None

    def install(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, self._caught)

    def attach(self, loop: asyncio.AbstractEventLoop, on_signal: Callable[[int], None]) -> None:
        self._target = (loop, on_signal)

    def _caught(self, sig: int, _frame) -> None:
        if self._target is None:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        loop, on_signal = self._target
        loop.call_soon_threadsafe(on_signal, sig)
