"""The gateway's /metrics (docs/metrics.md, API gateway): the families, what each counts, promtool.

Counting tests use `gateway`, the app in this process over the stack's real
services, whose registry no other test touches: its deltas are exact.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import generate_latest

from splitgpt.api.metrics import ApiMetrics, ErrorAnswers, error_type
from tests.metrics_text import PROCESS_FAMILIES, Scrape, promtool_check_metrics, scrape

GATEWAY_FAMILIES = {
    "splitgpt_requests_total": "counter",
    "splitgpt_request_duration_seconds": "histogram",
    "splitgpt_requests_in_progress": "gauge",
    "splitgpt_errors_total": "counter",
    "splitgpt_generated_tokens_total": "counter",
    "splitgpt_prompt_tokens_total": "counter",
    "splitgpt_time_to_first_token_seconds": "histogram",
    "splitgpt_inter_token_latency_seconds": "histogram",
    "splitgpt_partition_step_seconds": "histogram",
    "splitgpt_cache_lookups_total": "counter",
    "splitgpt_cache_operation_duration_seconds": "histogram",
}
ENDPOINTS = (
    "/api/model/process",
    "/api/model/stream",
    "/api/model/parallel",
    "/api/model/pipeline",
    "/v1/completions",
    "/v1/chat/completions",
)
# The generation families, by model; the HTTP request families are by endpoint only.
BY_MODEL = (
    "splitgpt_generated_tokens_total",
    "splitgpt_prompt_tokens_total",
    "splitgpt_time_to_first_token_seconds_count",
    "splitgpt_inter_token_latency_seconds_count",
    "splitgpt_partition_step_seconds_count",
    "splitgpt_cache_lookups_total",
)
NOT_BY_MODEL = (
    "splitgpt_requests_total",
    "splitgpt_request_duration_seconds_count",
    "splitgpt_requests_in_progress",
    "splitgpt_errors_total",
    "splitgpt_cache_operation_duration_seconds_count",
)


def metrics_of(gateway) -> Scrape:
    r = gateway.get("/metrics")
    assert r.status_code == 200
    return Scrape(r.text)


def test_every_gateway_family_and_the_process_collectors(gateway):
    gateway.post("/api/model/process", json={"text": "Families", "max_tokens": 2, "cache": True})  # every family observed
    s = metrics_of(gateway)
    assert PROCESS_FAMILIES <= set(s.families)
    assert s.labelsets("splitgpt_service_info") == [{"service": "api", "version": "0.1.0"}]
    assert {name: s.families.get(name) for name in GATEWAY_FAMILIES} == GATEWAY_FAMILIES
    assert {ls["endpoint"] for ls in s.labelsets("splitgpt_requests_in_progress")} == set(ENDPOINTS)


def test_generation_families_carry_the_served_model_and_request_families_do_not(gateway):
    r = gateway.post("/api/model/process", json={"text": "By model", "max_tokens": 3, "ignore_eos": True, "cache": True})
    assert r.status_code == 200, r.text
    served = r.json()["model"]
    # Refused before the model is known (422), and a model the coordinator does not serve (404):
    # neither name becomes a label.
    assert gateway.post("/api/model/process", json={"text": "x", "max_tokens": 0}).status_code == 422
    assert gateway.post("/v1/completions", json={"model": "not-served-here", "prompt": "x"}).status_code == 404
    s = metrics_of(gateway)
    for name in BY_MODEL:
        assert s.labelsets(name), name
        assert {ls.get("model") for ls in s.labelsets(name)} == {served}, (name, s.labelsets(name))
    assert s.value("splitgpt_generated_tokens_total", model=served) >= 3
    assert {ls["result"] for ls in s.labelsets("splitgpt_cache_lookups_total")} == {"hit", "miss", "error", "forged"}
    for name in NOT_BY_MODEL:
        assert all("model" not in ls for ls in s.labelsets(name)), name
    assert "not-served-here" not in s.text


def test_two_models_count_apart():
    """One gateway, two served models: each model's series move alone."""
    metrics = ApiMetrics()
    for name, tokens in (("gpt2", 3), ("gpt2-xl", 5)):
        bound = metrics.for_model(name)
        assert metrics.for_model(name) is bound  # bound once
        bound.prompt_tokens.inc(4)
        bound.ttft.observe(0.1)
        for _ in range(tokens):
            bound.generated_tokens.inc()
        bound.partition_step(1).observe(0.01)
        bound.cache["miss"].inc()
    s = Scrape(generate_latest(metrics.registry).decode())
    assert s.value("splitgpt_generated_tokens_total", model="gpt2") == 3
    assert s.value("splitgpt_generated_tokens_total", model="gpt2-xl") == 5
    assert s.value("splitgpt_time_to_first_token_seconds_count", model="gpt2-xl") == 1
    assert s.value("splitgpt_partition_step_seconds_count", model="gpt2", partition="1") == 1
    assert s.value("splitgpt_cache_lookups_total", model="gpt2", result="miss") == 1
    assert s.value("splitgpt_cache_lookups_total", model="gpt2", result="hit") == 0
    assert {ls["model"] for ls in s.labelsets("splitgpt_cache_lookups_total")} == {"gpt2", "gpt2-xl"}


def test_every_generation_endpoint_is_counted_timed_and_done(gateway, model):
    before = metrics_of(gateway)
    assert gateway.post("/api/model/process", json={"text": "One", "max_tokens": 2}).status_code == 200
    assert gateway.post("/api/model/stream", json={"text": "Two", "max_tokens": 2}).status_code == 200
    r = gateway.post("/v1/completions", json={"model": model, "prompt": "Three", "max_tokens": 2})
    assert r.status_code == 200, r.text
    r = gateway.post(
        "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "Four"}], "max_tokens": 2}
    )
    assert r.status_code == 200, r.text
    r = gateway.post("/api/model/parallel", json={"text": "Five", "models": [model], "max_tokens": 2})
    assert r.status_code == 200, r.text
    r = gateway.post("/api/model/pipeline", json={"input": "Six", "stages": [{"prompt": "{input}", "max_tokens": 2}]})
    assert r.status_code == 200, r.text
    after = metrics_of(gateway)
    for endpoint in ENDPOINTS:
        grew = after.value("splitgpt_requests_total", endpoint=endpoint, status="200") - before.value(
            "splitgpt_requests_total", endpoint=endpoint, status="200"
        )
        assert grew == 1, endpoint
        assert (
            after.value("splitgpt_request_duration_seconds_count", endpoint=endpoint)
            == before.value("splitgpt_request_duration_seconds_count", endpoint=endpoint) + 1
        )
        assert after.value("splitgpt_requests_in_progress", endpoint=endpoint) == 0


def test_prompt_tokens_are_counted(gateway):
    before = metrics_of(gateway).value("splitgpt_prompt_tokens_total")
    r = gateway.post("/api/model/process", json={"text": "Count my prompt tokens, please", "max_tokens": 1})
    assert r.status_code == 200
    assert metrics_of(gateway).value("splitgpt_prompt_tokens_total") - before == r.json()["usage"]["prompt_tokens"]


def test_cache_operations_are_timed(gateway):
    before = metrics_of(gateway)
    body = {"text": "Cache me, timed", "max_tokens": 2, "temperature": 0, "cache": True}
    assert gateway.post("/api/model/process", json=body).json()["cached"] is False  # get (miss), then set
    assert gateway.post("/api/model/process", json=body).json()["cached"] is True  # get (hit)
    after = metrics_of(gateway)

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("splitgpt_cache_operation_duration_seconds_count", op="get") == 2
    assert grew("splitgpt_cache_operation_duration_seconds_count", op="set") == 1
    assert grew("splitgpt_cache_lookups_total", result="miss") == 1
    assert grew("splitgpt_cache_lookups_total", result="hit") == 1


def test_every_error_answer_is_counted_by_its_type(gateway, model):
    before = metrics_of(gateway)
    answers = [
        gateway.post("/api/model/process", json={"text": "x", "max_tokens": 0}),  # 422 validation_error
        gateway.post("/api/model/process", json={"text": "x", "max_tokens": 100000}),  # 400 from the context check
        gateway.get("/no/such/route"),  # 404 not_found
        gateway.post("/api/model/process", content=b"{" + b" " * (1024 * 1024 + 10) + b"}",
                     headers={"content-type": "application/json"}),  # 413 from the body-limit middleware
        gateway.post("/v1/completions", json={"model": "no-such-model", "prompt": "x"}),  # 404 on /v1: OpenAI's shape
    ]  # fmt: skip
    types = []
    for r in answers:
        assert r.status_code >= 400, r.text
        error = r.json()["error"]
        types.append(error["code"] if r.request.url.path.startswith("/v1") else error["type"])
    after = metrics_of(gateway)
    for kind in set(types):
        assert after.value("splitgpt_errors_total", type=kind) - before.value("splitgpt_errors_total", type=kind) == types.count(
            kind
        ), kind
    assert after.value("splitgpt_errors_total") - before.value("splitgpt_errors_total") == len(answers)
    assert metrics_of(gateway).value("splitgpt_errors_total") == after.value("splitgpt_errors_total")  # /metrics is no error


def test_a_stream_is_in_progress_until_its_last_byte(stack, api):
    body = {"text": "In progress", "max_tokens": 60, "ignore_eos": True, "cache": False}
    with httpx.stream("POST", f"{stack.url}/api/model/stream", json=body, timeout=120) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(line for line in lines if "token" in line)
        during = scrape(f"{stack.url}/metrics").value("splitgpt_requests_in_progress", endpoint="/api/model/stream")
        for _ in lines:  # to the last byte
            pass
    assert during >= 1
    after = scrape(f"{stack.url}/metrics").value("splitgpt_requests_in_progress", endpoint="/api/model/stream")
    assert after == 0


def test_the_gateway_metrics_pass_promtool(stack, api):
    assert api.post("/api/model/process", json={"text": "Lint", "max_tokens": 2}).status_code == 200
    promtool_check_metrics(scrape(f"{stack.url}/metrics").text)


# --- the error counter without a stack -------------------------------------------


@pytest.mark.parametrize(
    ("body", "openai", "expected"),
    [
        (b'{"error": {"type": "overloaded", "message": "m"}}', False, "overloaded"),
        (b'{"error": {"message": "m", "type": "invalid_request_error", "param": null, "code": "validation_error"}}', True,
         "validation_error"),
        (b'{"error": {"message": "m", "type": "server_error", "code": null}}', True, "server_error"),
        (b'{"ready": false, "error": "no coordinator"}', False, None),  # /api/ready's 503: not the error shape
        (b"not json", False, None),
        (b"[]", False, None),
    ],
)  # fmt: skip
def test_error_type_reads_the_one_error_shape(body, openai, expected):
    assert error_type(body, openai) == expected


async def test_error_answers_counts_whatever_layer_answered():
    """A bare ASGI app standing for a middleware that answers before any route (auth, limits)."""
    metrics = ApiMetrics()

    async def edge(scope, receive, send):
        status = 401 if scope["path"] == "/denied" else 200
        body = b'{"error": {"type": "invalid_api_key", "message": "m"}}' if status == 401 else b'{"error": "not one"}'
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body[:10], "more_body": True})
        await send({"type": "http.response.body", "body": body[10:]})

    app = ErrorAnswers(edge, metrics)
    sent = []

    async def send(message):
        sent.append(message)

    for path in ("/denied", "/fine", "/denied"):
        await app({"type": "http", "path": path}, None, send)
    assert metrics.errors.labels("invalid_api_key")._value.get() == 2
    assert len(sent) == 9  # every message passed on untouched
