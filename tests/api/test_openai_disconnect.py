"""A /v1 client that goes away ends its generations (every choice) on every node."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.metrics_text import Scrape

from .test_api_contract import node_cached_sessions


@pytest.fixture
def model(api) -> str:
    return api.get("/v1/models").json()["data"][0]["id"]


def generated_tokens(api) -> float:
    """Tokens generated, every model's together."""
    return Scrape(api.get("/metrics").text).value("splitgpt_generated_tokens_total")


def assert_all_freed(api, stack, before: float, budget: int) -> None:
    """No task left, no cache on any node, and fewer tokens generated than the choices asked for."""
    deadline = time.monotonic() + 10
    while api.get("/api/tasks").json()["tasks"]:
        assert time.monotonic() < deadline, "the generation was not cancelled"
        time.sleep(0.05)
    for p in range(3):
        assert node_cached_sessions(stack.node_address(p), stack.security()) == 0
    assert generated_tokens(api) - before < budget


def test_a_streaming_client_that_leaves_cancels_every_choice(api, stack, model):
    body = {"model": model, "prompt": ["Bye", "Later"], "n": 2, "max_tokens": 110, "ignore_eos": True, "stream": True}
    before = generated_tokens(api)
    with httpx.Client(base_url=stack.url, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # leave after the first chunk
    assert_all_freed(api, stack, before, 4 * 110)


def test_a_waiting_client_that_leaves_cancels_its_generation(api, stack, model):
    body = {"model": model, "prompt": "Bye", "n": 2, "max_tokens": 110, "ignore_eos": True}
    before = generated_tokens(api)
    # 2 x 110 tokens take the tiny stack about 0.3-0.5 s (a few ms an iteration):
    # the client leaves well before the end.
    with httpx.Client(base_url=stack.url, timeout=0.1) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/v1/completions", json=body)
    assert_all_freed(api, stack, before, 2 * 110)
