"""The child processes of `splitgpt up`: started, watched, restarted, stopped in order.

Every child runs in its own session (a Ctrl-C at the terminal reaches the
launcher only), its output prefixed with its name. A child that dies while
the stack serves is reported and, unless restarts are off, started again
after a backoff; one that keeps dying is given up on, loudly.

Stopping goes tier by tier, lowest first: the fronts (the API gateway, the
web UI) finish or end their running requests while everything behind them
still answers; then the coordinator, once no gateway calls it; then the
nodes and the tokenizer. A child that outlives its tier's time is killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field

COLORS = ["36", "32", "33", "35", "34", "31", "96", "92", "93", "95"]


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    tier: int  # stopped in ascending order
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 10.0  # after stop_signal; then SIGKILL
    essential: bool = True  # the stack cannot serve without it (no other replica can stand in)
    port: int | None = None  # the port it listens on, checked before anything starts
    port_flag: str = ""  # the `splitgpt up` option that moves that port
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RestartPolicy:
    enabled: bool = True
    max_restarts: int = 5  # in a row, each within `stable_s` of its start
    first_backoff_s: float = 1.0  # doubled for each restart in a row
    max_backoff_s: float = 30.0
    stable_s: float = 60.0  # a child that ran this long starts its count again

    def backoff_s(self, restarts_in_a_row: int) -> float:
        return min(self.first_backoff_s * 2**restarts_in_a_row, self.max_backoff_s)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (signal {-code})"
    return f"exited with code {code}"


def say(line: str) -> None:
    print(f"splitgpt up: {line}", file=sys.stderr, flush=True)


class Supervisor:
    def __init__(self, children: list[Child], restart: RestartPolicy) -> None:
        self.children = children
        self.restart = restart
        # Before the stack is ready, any death fails the start: restarting a
        # child that cannot start only hides why.
        self.serving = False
        self.stopping = False
        self._stop = asyncio.Event()  # wakes the keepers out of their backoff
        # Set (with the reason) when an essential child is gone for good.
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._keepers: list[asyncio.Task] = []

    async def start(self) -> None:
        for i, child in enumerate(self.children):
            await self._spawn(child)
            self._keepers.append(asyncio.create_task(self._keep(child, COLORS[i % len(COLORS)]), name=child.name))

    async def _spawn(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.argv, env=child.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the children in order
        )  # fmt: skip

    async def _keep(self, child: Child, color: str) -> None:
        """Relay the child's output and watch it, through its restarts."""
        restarts = 0
        while True:
            started = time.monotonic()
            process = child.process
            assert process is not None
            pump = asyncio.create_task(_pump(process, child.name, color))
            code = await process.wait()
            try:  # its last lines; a grandchild could hold the pipe open, so not for long
                await asyncio.wait_for(pump, 2.0)
            except TimeoutError:
                pass
            if self.stopping:
                return
            what = f"{child.name} {describe_exit(code)}"
            if time.monotonic() - started >= self.restart.stable_s:
                restarts = 0
            if not self.serving:
                self._give_up(f"{what} while the stack was starting (its output is above)", fatal=True)
                return
            if code == 2:  # by convention a usage or configuration error: it would only fail again
                self._give_up(f"{what} (a configuration error, see above); not restarting it", child.essential)
                return
            if not self.restart.enabled:
                self._give_up(f"{what}; not restarting it (--no-restart)", child.essential)
                return
            if restarts >= self.restart.max_restarts:
                self._give_up(f"{what}, {restarts + 1} times in a row; giving up on it", child.essential)
                return
            delay = self.restart.backoff_s(restarts)
            restarts += 1
            say(f"{what}; restarting it in {delay:g}s (restart {restarts} of {self.restart.max_restarts})")
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                return  # the stack is stopping
            except TimeoutError:
                pass
            await self._spawn(child)
            if self.stopping:  # began while it was starting: stop() did not see this process
                _kill(child)

    def _give_up(self, reason: str, fatal: bool) -> None:
        if fatal:
            say(reason)
            if not self.failed.done():
                self.failed.set_result(reason)
        else:
            say(f"{reason}. The stack keeps running: the coordinator routes around it where another replica serves its "
                "partition, and /api/ready says which partition has none. Ctrl-C stops everything.")  # fmt: skip

    async def stop(self) -> None:
        """Tier by tier: signal each child, wait for it, kill it if it outlives its time."""
        self.stopping = True
        self._stop.set()
        for tier in sorted({c.tier for c in self.children}):
            group = [c for c in self.children if c.tier == tier and _running(c)]
            for child in group:
                try:  # its session, so that what it runs (the UI's build) stops with it
                    os.killpg(child.process.pid, child.stop_signal)
                except ProcessLookupError:
                    pass
            waits = [asyncio.create_task(_wait_or_kill(c)) for c in group]
            await asyncio.gather(*waits)
        await asyncio.gather(*self._keepers, return_exceptions=True)

    def kill_now(self) -> None:
        """SIGKILL every child's process group: a second Ctrl-C."""
        self.stopping = True
        self._stop.set()
        for child in self.children:
            if _running(child):
                _kill(child)


def _running(child: Child) -> bool:
    return child.process is not None and child.process.returncode is None


def _kill(child: Child) -> None:
    try:  # the whole session: whatever the child started goes too
        os.killpg(child.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def _wait_or_kill(child: Child) -> None:
    try:
        await asyncio.wait_for(child.process.wait(), child.stop_timeout_s)
    except TimeoutError:
        say(f"{child.name} did not stop within {child.stop_timeout_s:g}s of {signal.Signals(child.stop_signal).name}; killing it")
        _kill(child)
        await child.process.wait()


async def _pump(process: asyncio.subprocess.Process, name: str, color: str) -> None:
    tag = f"\033[{color}m{name:<12}|\033[0m " if sys.stdout.isatty() else f"{name:<12}| "
    assert process.stdout is not None
    async for line in process.stdout:
        sys.stdout.write(tag + line.decode(errors="replace"))
        sys.stdout.flush()
