"""Ctrl-C on `splitgpt up` while requests run: the front stops first, running
requests finish within the grace or end with a clean final word, no
traceback anywhere, every child gone; a second Ctrl-C kills at once."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from splitgpt.bench.local_stack import Stack
from splitgpt.core.tiny_model import write_checkpoint

pytestmark = pytest.mark.system  # starts real services as processes

GRACE_S = 3.0
LONG = {"text": "Once upon a time", "max_tokens": 1000, "ignore_eos": True}


@pytest.fixture(scope="module")
def long_context_checkpoint(tmp_path_factory) -> Path:
    """conftest's tiny GPT-2 with a 1024-token context: a stream that outlasts the grace
    (the 128-token one ends in about a second)."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny-gpt2-1k"), n_layer=4, n_embd=64, n_head=4, n_positions=1024, seed=1)


def children_of(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(proc.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Stream(threading.Thread):
    """POST /api/model/stream in the background: each SSE event with the time it arrived."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.events, self.error = url, [], None
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("POST", f"{self.url}/api/model/stream", json=LONG, timeout=60) as r:
                name = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        self.events.append((time.monotonic(), name, json.loads(line[6:])))
        except httpx.HTTPError as exc:
            self.error = exc

    def wait_for_tokens(self, n: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.events) < n:
            assert time.monotonic() < deadline and self.is_alive(), (self.events[-3:], self.error)
            time.sleep(0.02)


def post_in_background(url: str, body: dict) -> dict:
    result: dict = {}

    def run() -> None:
        r = httpx.post(f"{url}/api/model/process", json=body, timeout=60)
        result.update(status=r.status_code, body=r.json(), headers=r.headers, at=time.monotonic())

    result["thread"] = threading.Thread(target=run, daemon=True)
    result["thread"].start()
    return result


def wait_for_tasks(url: str, n: int) -> None:
    deadline = time.monotonic() + 30
    while len(httpx.get(f"{url}/api/tasks").json()["tasks"]) < n:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_ctrl_c_finishes_short_requests_ends_long_ones_cleanly_and_stops_front_to_back(long_context_checkpoint, tmp_path):
    stack = Stack(long_context_checkpoint, tmp_path, partitions=2, extra_args=["--shutdown-grace", str(GRACE_S)])
    try:
        stack.wait_ready()
        stream = Stream(stack.url)
        long_process = post_in_background(stack.url, LONG)
        stream.wait_for_tokens(5)
        short = post_in_background(stack.url, {"text": "Hi", "max_tokens": 40, "ignore_eos": True})
        wait_for_tasks(stack.url, 3)
        children = children_of(stack.process.pid)
        assert len(children) == 5  # tokenizer, 2 nodes, coordinator, api

        interrupted = time.monotonic()
        stack.process.send_signal(signal.SIGINT)
        stream.join(GRACE_S + 10)
        short["thread"].join(10)
        long_process["thread"].join(10)
        code = stack.process.wait(30)
        stopped_s = time.monotonic() - interrupted
    finally:
        stack.stop()

    # The stream ran on through the grace, then ended with one final event saying why.
    at, name, data = stream.events[-1]
    assert name == "error" and data["error"]["type"] == "shutting_down", stream.events[-3:]
    assert GRACE_S - 0.5 < at - interrupted < GRACE_S + 1.5
    assert any(t > interrupted + 0.5 and n == "token" for t, n, _ in stream.events)
    # A request that fits in the grace finishes; one that does not gets a 503 that says so.
    assert short["status"] == 200 and short["at"] - interrupted < GRACE_S, short
    assert long_process["status"] == 503 and long_process["body"]["error"]["type"] == "shutting_down"
    assert long_process["headers"]["retry-after"] == "1"

    assert code == 0
    assert not [pid for pid in children if alive(pid)]
    log = stack.log_path.read_text()
    for bad in ("Traceback", "CancelledError", "Cancelling all calls", "did not stop within"):
        assert bad not in log, log[-4000:]
    # Front to back: the coordinator stops once the API has finished, the nodes once it has.
    lines = log.splitlines()

    def first(prefix: str, text: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix) and text in line)

    assert first("api ", "Finished server process") < first("coordinator ", "draining") < first("part0-r0 ", "draining")
    print(f"\nCtrl-C with a stream running: stream ended {at - interrupted:.2f}s after, stack stopped in {stopped_s:.2f}s")


def test_a_second_ctrl_c_kills_everything_at_once(long_context_checkpoint, tmp_path):
    stack = Stack(long_context_checkpoint, tmp_path, partitions=2, extra_args=["--shutdown-grace", "30"])
    try:
        stack.wait_ready()
        stream = Stream(stack.url)
        stream.wait_for_tokens(5)
        children = children_of(stack.process.pid)
        stack.process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        again = time.monotonic()
        stack.process.send_signal(signal.SIGINT)
        code = stack.process.wait(10)
        exited_s = time.monotonic() - again
        deadline = time.monotonic() + 2
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        gone_s = time.monotonic() - again
    finally:
        stack.stop()
    assert code == 128 + signal.SIGINT
    assert not [pid for pid in children if alive(pid)]
    assert exited_s < 2.0 and gone_s < 2.0, (exited_s, gone_s)
    print(f"\nsecond Ctrl-C: launcher gone in {exited_s:.2f}s, every child in {gone_s:.2f}s")
