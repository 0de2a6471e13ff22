"""A streaming client that leaves before its first event ends its generation then, not at the
first event: its node is stopped (SIGSTOP), so the first token never comes while it waits."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from splitgpt.bench.local_stack import Stack

pytestmark = pytest.mark.system  # starts real services as processes


@pytest.fixture(scope="module")
def stalled_stack(tiny_checkpoint, tmp_path_factory):
    stack = Stack(tiny_checkpoint, tmp_path_factory.mktemp("early-disconnect"), partitions=1, replicas=1)
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def tasks(stack: Stack) -> list[dict]:
    return httpx.get(f"{stack.url}/api/tasks", timeout=10).json()["tasks"]


@pytest.mark.parametrize(
    "path,body",
    [
        ("/api/model/stream", {"text": "Waiting for a first token", "max_tokens": 20}),
        ("/v1/completions", {"prompt": ["one", "two"], "max_tokens": 20, "stream": True}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "stream": True}),
    ],
)
def test_a_client_that_leaves_before_the_first_event_ends_its_generation_at_once(stalled_stack, path, body):
    stack = stalled_stack
    if path.startswith("/v1"):
        body = {"model": httpx.get(f"{stack.url}/v1/models", timeout=10).json()["data"][0]["id"], **body}
    node = stack.node_pid(0)
    os.kill(node, signal.SIGSTOP)
    try:
        with pytest.raises(httpx.ReadTimeout):  # no status line: the first event is held up
            httpx.post(f"{stack.url}{path}", json=body, timeout=httpx.Timeout(10, read=1.5))
        left = time.monotonic()
        while tasks(stack):  # the coordinator still lists the generation until the gateway cancels it
            assert time.monotonic() - left < 3, f"the generation outlived its client: {tasks(stack)}"
            time.sleep(0.1)
    finally:
        os.kill(node, signal.SIGCONT)
    # and the stack goes on serving
    r = httpx.post(f"{stack.url}/api/model/process", json={"text": "After", "max_tokens": 3, "cache": False}, timeout=60)
    assert r.status_code == 200, r.text
