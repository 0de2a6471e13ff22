"""The REST contract against the real stack, as a user calls it."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from transformers import AutoTokenizer

from tests.hf_reference import hf_text
from tests.metrics_text import Scrape, scrape

PROMPTS = ["Hello, my name is", "The quick brown fox", "In 1969, the first", "naïve café 👋 世界"]


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_checkpoint):
    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_output_equals_one_hf_process(api, hf_model, hf_tokenizer, prompt):
    r = api.post("/api/model/process", json={"text": prompt, "max_tokens": 24})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["generated_text"] == hf_text(hf_model, hf_tokenizer, prompt, 24)
    assert body["usage"]["prompt_tokens"] == len(hf_tokenizer(prompt)["input_ids"])


def test_a_prompt_sharing_an_earlier_ones_prefix_reuses_it_and_still_equals_hf(api, stack, hf_model, hf_tokenizer):
    """Prefix reuse (on in this module's stack): the second prompt starts with the first's
    whole 16-token blocks, which the nodes kept; its text is still HF's own."""
    shared = "A system prompt that every request of this chat begins with, long enough for several blocks. " * 2
    coordinator = f"http://127.0.0.1:{stack.metrics_base}/metrics"
    reused_before = scrape(coordinator).value("splitgpt_coordinator_prefix_reused_tokens_total")
    for question in ("What is the weather like?", "Who wrote this?"):
        prompt = shared + question
        r = api.post("/api/model/process", json={"text": prompt, "max_tokens": 16, "cache": False})
        assert r.status_code == 200, r.text
        assert r.json()["generated_text"] == hf_text(hf_model, hf_tokenizer, prompt, 16)
    shared_blocks = len(hf_tokenizer(shared)["input_ids"]) // 16
    reused = scrape(coordinator).value("splitgpt_coordinator_prefix_reused_tokens_total") - reused_before
    assert reused == 16 * shared_blocks > 0


def test_response_contract(api, stack):
    r = api.post(
        "/api/model/process",
        json={"text": "Hello", "max_tokens": 5, "metadata": {"user": "u1"}, "ignore_eos": True},
        headers={"X-Request-ID": "req-123"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"generated_text", "finish_reason", "usage", "cached", "timings", "request_id", "model"}
    assert body["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 5}
    assert body["request_id"] == "req-123" and body["metadata"] == {"user": "u1"}
    assert body["cached"] is False
    t = body["timings"]
    assert t["total_ms"] >= t["inference_ms"] > 0 and t["tokenize_ms"] > 0
    assert [p["partition"] for p in t["partitions"]] == [0, 1, 2]
    assert all(p["ms"] > 0 and p["node"].startswith(f"part{p['partition']}") for p in t["partitions"])


def read_sse(response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_stream_sends_tokens_then_done_with_the_same_text(api):
    body = {"text": "The quick brown fox jumps", "max_tokens": 12, "ignore_eos": True}
    with api.stream("POST", "/api/model/stream", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = read_sse(r)
    whole = api.post("/api/model/process", json=body).json()  # the same result, now from the cache
    assert whole["cached"] is True
    names = [n for n, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"token"}
    assert "".join(d["text"] for n, d in events if n == "token") == whole["generated_text"]
    assert events[-1][1]["generated_text"] == whole["generated_text"]
    tokens = [d for n, d in events if n == "token" and d["token_id"] >= 0]
    assert len(tokens) == events[-1][1]["usage"]["completion_tokens"] == 12  # one event per token


def test_stop_string_cuts_the_text(api):
    full = api.post("/api/model/process", json={"text": "Hello, my name is", "max_tokens": 20, "ignore_eos": True}).json()
    text = full["generated_text"]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    r = api.post("/api/model/process", json={"text": "Hello, my name is", "max_tokens": 20, "ignore_eos": True, "stop": [stop]})
    body = r.json()
    assert body["finish_reason"] == "stop"
    assert body["generated_text"] == text[: text.index(stop)]


def test_deterministic_results_are_cached(api):
    body = {"text": "A cached prompt", "max_tokens": 6}
    first = api.post("/api/model/process", json=body).json()
    second = api.post("/api/model/process", json=body).json()
    assert first["cached"] is False and second["cached"] is True
    assert second["generated_text"] == first["generated_text"]
    assert second["request_id"] != first["request_id"]


def test_seeded_sampling_is_repeatable_and_unseeded_is_not_cached(api):
    body = {"text": "Once upon a time", "max_tokens": 8, "temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 7}
    a = api.post("/api/model/process", json=body).json()
    b = api.post("/api/model/process", json=body).json()
    assert a["generated_text"] == b["generated_text"]
    unseeded = {**body, "seed": None}
    assert api.post("/api/model/process", json=unseeded).json()["cached"] is False
    assert api.post("/api/model/process", json=unseeded).json()["cached"] is False


BAD_FIELDS = [
    ({"text": ""}, "text"),
    ({}, "text"),
    ({"text": 123}, "text"),
    ({"text": "hi", "max_tokens": "many"}, "max_tokens"),
    ({"text": "hi", "max_tokens": 0}, "max_tokens"),
    ({"text": "hi", "max_tokens": 129}, "max_tokens"),  # above the tiny model's context of 128
    ({"text": "hi", "temperature": -0.1}, "temperature"),
    ({"text": "hi", "top_p": 0}, "top_p"),
    ({"text": "hi", "top_p": 1.5}, "top_p"),
    ({"text": "hi", "top_k": -1}, "top_k"),
    ({"text": "hi", "seed": -1}, "seed"),
    ({"text": "hi", "stop": [""]}, "stop"),
    ({"text": "hi", "max_tokens": 5, "min_tokens": 6}, "min_tokens"),
    ({"text": "hi", "max_token": 5}, "max_token"),  # a typo is named, not ignored
]


@pytest.mark.parametrize("path", ["/api/model/process", "/api/model/stream"])
@pytest.mark.parametrize("body,param", BAD_FIELDS)
def test_invalid_fields_are_422_naming_the_field(api, path, body, param):
    r = api.post(path, json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "validation_error" and param in error["param"]


@pytest.mark.parametrize("path", ["/api/model/process", "/api/model/stream"])
def test_prompt_and_max_tokens_beyond_context_is_400_saying_by_how_much(api, path):
    prompt = " ".join(["word"] * 100)  # 100 tokens
    r = api.post(path, json={"text": prompt, "max_tokens": 40})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "context_length_exceeded"
    assert "by 12" in error["message"] and "at most 28" in error["message"]


@pytest.mark.parametrize("raw", ['{"text": "hi",', "not json", '["text"]', ""])
def test_malformed_bodies_are_4xx_json(api, raw):
    r = api.post("/api/model/process", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert "message" in r.json()["error"]


def test_ops_endpoints(api):
    assert api.get("/api/health").json() == {"status": "ok"}
    ready = api.get("/api/ready")
    assert ready.status_code == 200
    assert ready.json()["partitions"] == {"0": True, "1": True, "2": True}
    nodes = api.get("/api/cluster").json()["nodes"]
    assert [(n["partition"], n["layers"], n["status"]) for n in nodes] == [
        (0, [0, 2], "SERVING"),
        (1, [2, 3], "SERVING"),
        (2, [3, 4], "SERVING"),
    ]
    # What each node holds: its weights (the last, with the tied embedding, the most) and its resident memory.
    assert all(n["weight_bytes"] > 0 and n["resident_bytes"] > n["weight_bytes"] for n in nodes)
    assert nodes[2]["weight_bytes"] > nodes[1]["weight_bytes"]
    assert api.get("/docs").status_code == 200
    assert "/api/model/process" in api.get("/openapi.json").json()["paths"]


def test_tasks_list_and_cancel(api, stack):
    import threading

    result = {}

    def long_request():
        with httpx.Client(base_url=stack.url, timeout=60) as c:
            result["r"] = c.post(
                "/api/model/process", json={"text": "A long one", "max_tokens": 100, "ignore_eos": True},
                headers={"X-Request-ID": "to-cancel"},
            )  # fmt: skip

    worker = threading.Thread(target=long_request)
    worker.start()
    deadline = time.monotonic() + 20
    while not any(t["request_id"] == "to-cancel" for t in api.get("/api/tasks").json()["tasks"]):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    task = next(t for t in api.get("/api/tasks").json()["tasks"] if t["request_id"] == "to-cancel")
    assert task["chain"] == ["part0-r0", "part1-r0", "part2-r0"] and task["max_tokens"] == 100
    assert api.delete("/api/tasks/to-cancel").json() == {"request_id": "to-cancel", "cancelled": True}
    worker.join(30)
    body = result["r"].json()
    assert result["r"].status_code == 200 and body["finish_reason"] == "cancelled"
    assert body["usage"]["completion_tokens"] < 100
    r = api.delete("/api/tasks/to-cancel")
    assert r.status_code == 404 and r.json()["error"]["param"] == "request_id"
    # The cut-short result was not cached: the same request runs in full.
    again = api.post("/api/model/process", json={"text": "A long one", "max_tokens": 100, "ignore_eos": True}).json()
    assert again["cached"] is False and again["usage"]["completion_tokens"] == 100


def test_a_client_that_disconnects_frees_its_caches_on_every_node(api, stack):
    with httpx.Client(base_url=stack.url, timeout=60) as c:
        with c.stream("POST", "/api/model/stream", json={"text": "Bye", "max_tokens": 110, "ignore_eos": True}) as r:
            for line in r.iter_lines():
                if line.startswith("event: token"):
                    break  # leave after the first token
    deadline = time.monotonic() + 10
    while api.get("/api/tasks").json()["tasks"]:
        assert time.monotonic() < deadline, "the generation was not cancelled"
        time.sleep(0.05)
    for p in range(3):
        assert node_cached_sessions(stack.node_address(p), stack.security()) == 0


def node_cached_sessions(address: str, security) -> int:
    import asyncio

    from splitgpt.rpc import node_pb2, node_pb2_grpc
    from splitgpt.shells.grpc_runtime import client_channel

    async def ask():
        async with client_channel(address, security) as channel:
            return (await node_pb2_grpc.PartitionNodeStub(channel).Info(node_pb2.NodeInfoRequest())).cached_sessions

    deadline = time.monotonic() + 5
    while (n := asyncio.run(ask())) and time.monotonic() < deadline:
        time.sleep(0.05)  # releases are sent in the background
    return n


def test_prometheus_metrics(api):
    api.post("/api/model/process", json={"text": "Count me", "max_tokens": 4, "ignore_eos": True, "seed": 3, "temperature": 0.5})
    api.post("/api/model/process", json={"text": ""})
    text = api.get("/metrics").text
    assert 'splitgpt_requests_total{endpoint="/api/model/process",status="200"}' in text
    assert 'splitgpt_requests_total{endpoint="/api/model/process",status="422"}' in text
    samples = Scrape(text)  # the generation families by model: summed over models
    assert samples.value("splitgpt_generated_tokens_total") >= 4
    assert samples.value("splitgpt_time_to_first_token_seconds_count") >= 1
    assert samples.value("splitgpt_inter_token_latency_seconds_count") >= 3
    for p in range(3):
        assert samples.value("splitgpt_partition_step_seconds_count", partition=str(p)) >= 4
