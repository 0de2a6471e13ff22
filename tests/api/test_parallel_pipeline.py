"""Requests across models, at the HTTP level, on one real two-model stack.

/api/model/parallel (every model's result, the first to finish, the first to
stream) and /api/model/pipeline (stages that feed each other), each model's
text greedy-identical to its own Hugging Face model; cancelled losers leave no
sequence running; refusals in the one error shape, before anything runs; and a
key's concurrency limit counting one generation per model.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

from splitgpt.bench.local_stack import Stack
from splitgpt.core.tiny_model import write_checkpoint
from tests.api.error_shape import error_of
from tests.hf_reference import hf_text_of
from tests.metrics_text import scrape

pytestmark = pytest.mark.system  # starts real services as processes

MAX_CONCURRENT = 2  # per client address (the gateway is open): a parallel request of both models fills it


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory):
    """Another, smaller geometry than the tiny model's: 2 blocks of width 48."""
    return write_checkpoint(tmp_path_factory.mktemp("second-gpt2"), n_layer=2, n_embd=48, n_head=4, n_positions=128, seed=7)


@pytest.fixture(scope="module")
def stack(tiny_checkpoint, second_checkpoint, tmp_path_factory):
    env = {"SPLITGPT_API_MAX_CONCURRENT_PER_KEY": str(MAX_CONCURRENT)}
    stack = Stack(
        tiny_checkpoint,
        tmp_path_factory.mktemp("parallel-stack"),
        partitions=2,
        env=env,
        more_models=[f"second={second_checkpoint}"],
    )
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def hf(tiny_checkpoint, second_checkpoint):
    tokenizer = GPT2TokenizerFast.from_pretrained(tiny_checkpoint)
    return tokenizer, {
        str(tiny_checkpoint): GPT2LMHeadModel.from_pretrained(tiny_checkpoint).eval(),
        "second": GPT2LMHeadModel.from_pretrained(second_checkpoint).eval(),
    }


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> str:
    """The default model's name: its directory."""
    return str(tiny_checkpoint)


def post(stack: Stack, path: str, body: dict | str, **headers: str) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(f"{stack.url}{path}", content=content, headers={"content-type": "application/json", **headers}, timeout=120)


def running_tasks(stack: Stack) -> list[str]:
    return [t["request_id"] for t in httpx.get(f"{stack.url}/api/tasks", timeout=10).json()["tasks"]]


def cancelled_count(stack: Stack, model: str) -> float:
    coordinator = f"http://127.0.0.1:{stack.metrics_base}/metrics"
    return scrape(coordinator).value("splitgpt_coordinator_requests_finished_total", finish_reason="cancelled", model=model)


def test_parallel_all_answers_every_models_own_greedy_text_in_the_order_asked(stack, hf, tiny):
    prompt = "The partitioned model answers"
    body = {"text": prompt, "models": ["second", tiny], "max_tokens": 16, "cache": False}
    r = post(stack, "/api/model/parallel", body, **{"X-Request-ID": "par-all"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["aggregate"] == "all" and answer["timings"]["total_ms"] > 0
    results = answer["results"]
    assert [x["model"] for x in results] == ["second", tiny]
    assert [x["request_id"] for x in results] == ["par-all.m0", "par-all.m1"]
    expected = [hf_text_of(hf, "second", prompt, 16), hf_text_of(hf, tiny, prompt, 16)]
    assert expected[0] != expected[1]  # two different models: a mix-up cannot pass
    assert [x["generated_text"] for x in results] == expected
    assert all(x["usage"]["completion_tokens"] == 16 and not x["cached"] for x in results)


def test_parallel_first_answers_the_first_to_finish_and_cancels_the_other(stack, hf, tiny):
    prompt = "A race between two models"
    second_text, tiny_text = hf_text_of(hf, "second", prompt, 48), hf_text_of(hf, tiny, prompt, 48)
    # A stop string early in the second model's text and nowhere in the tiny one's: the second
    # model finishes after a few tokens, the tiny one has dozens to go when it is cancelled.
    at = next(
        i for i in range(8, 40) if second_text[i : i + 6] not in tiny_text and second_text.find(second_text[i : i + 6]) == i
    )
    before = cancelled_count(stack, tiny)
    body = {"text": prompt, "models": [tiny, "second"], "aggregate": "first", "max_tokens": 48, "stop": second_text[at : at + 6]}
    r = post(stack, "/api/model/parallel", body, **{"X-Request-ID": "race"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["aggregate"], answer["model"], answer["index"], answer["cancelled"]) == ("first", "second", 1, [tiny])
    assert (answer["request_id"], answer["finish_reason"]) == ("race.m1", "stop")
    assert answer["generated_text"] == second_text[:at]
    # The loser's sequence was cancelled on the coordinator, not left to run its 48 tokens.
    deadline = time.monotonic() + 10
    while cancelled_count(stack, tiny) < before + 1 or running_tasks(stack):
        assert time.monotonic() < deadline, (running_tasks(stack), cancelled_count(stack, tiny), before)
        time.sleep(0.05)


def test_a_parallel_stream_streams_the_first_model_to_yield_a_token(stack, hf, tiny):
    prompt = "Streams race to their first token"
    body = {"text": prompt, "models": ["second", tiny], "aggregate": "first", "stream": True, "max_tokens": 12, "cache": False}
    with httpx.stream(
        "POST", f"{stack.url}/api/model/parallel", json=body, headers={"X-Request-ID": "race-stream"}, timeout=120
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = []
        for block in r.read().decode().split("\n\n"):
            if block.strip():
                name, data = block.split("\n", 1)
                events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    names = [name for name, _ in events]
    assert names[0] == "start" and names[-1] == "done" and set(names[1:-1]) == {"token"}, names
    start, done = events[0][1], events[-1][1]
    winner = start["model"]
    assert winner in (tiny, "second") and start["cancelled"] == [m for m in ("second", tiny) if m != winner]
    assert ["second", tiny][start["index"]] == winner and done["model"] == winner
    assert done["request_id"] == f"race-stream.m{start['index']}"
    text = "".join(data["text"] for name, data in events if name == "token")
    assert text == done["generated_text"] == hf_text_of(hf, winner, prompt, 12)
    deadline = time.monotonic() + 10
    while running_tasks(stack):
        assert time.monotonic() < deadline, running_tasks(stack)
        time.sleep(0.05)


def test_a_pipeline_feeds_each_stage_the_earlier_texts(stack, hf, tiny):
    question = "Two models in a row"
    body = {
        "input": question,
        "stages": [
            {"model": "second", "prompt": "{input}:", "max_tokens": 8, "cache": False},
            {"model": None, "prompt": "Q: {{{input}}} A:{stage_0} B:", "max_tokens": 10, "cache": False},
        ],
    }
    r = post(stack, "/api/model/pipeline", body, **{"X-Request-ID": "pipe"})
    assert r.status_code == 200, r.text
    answer = r.json()
    first, second = answer["stages"]
    assert first["prompt"] == f"{question}:" and first["model"] == "second" and first["request_id"] == "pipe.s0"
    assert first["generated_text"] == hf_text_of(hf, "second", first["prompt"], 8)
    assert second["prompt"] == "Q: {" + question + "} A:" + first["generated_text"] + " B:"
    assert second["model"] == tiny and second["request_id"] == "pipe.s1"
    assert second["generated_text"] == hf_text_of(hf, tiny, second["prompt"], 10)
    assert answer["output"] == second["generated_text"]
    assert len(answer["timings"]["stages_ms"]) == 2 and answer["timings"]["total_ms"] >= sum(answer["timings"]["stages_ms"])


def refused(r: httpx.Response, status: int, type_: str, param: str | None) -> str:
    assert r.status_code == status, r.text
    error = error_of(r)
    assert error["type"] == type_ and error.get("param") == param, error
    return error["message"]


def test_refusals_are_4xx_in_the_one_error_shape_and_run_nothing(stack, tiny):
    ok_stage = {"prompt": "{input}", "max_tokens": 2}
    base = {"text": "x", "max_tokens": 2}
    cases = [
        ("/api/model/parallel", {**base, "models": ["second", "second"]}, 422, "validation_error", "models"),
        ("/api/model/parallel", {**base, "models": []}, 422, "validation_error", "models"),
        ("/api/model/parallel", {**base, "models": [f"m{i}" for i in range(9)]}, 422, "validation_error", "models"),
        ("/api/model/parallel", {**base, "models": ["second"], "aggregate": "any"}, 422, "validation_error", "aggregate"),
        ("/api/model/parallel", {**base, "models": ["second"], "extra": 1}, 422, "validation_error", "extra"),
        ("/api/model/parallel", {**base, "models": ["second"], "max_tokens": "2"}, 422, "validation_error", "max_tokens"),
        ("/api/model/parallel", {**base, "models": ["second"], "stream": True}, 400, "unsupported", "stream"),
        ("/api/model/parallel", {**base, "models": ["second", "no-such"]}, 404, "model_not_found", "models[1]"),
        ("/api/model/parallel", {**base, "models": ["second"], "max_tokens": 500}, 422, "validation_error", "max_tokens"),
        ("/api/model/pipeline", {"input": "x", "stages": []}, 422, "validation_error", "stages"),
        ("/api/model/pipeline", {"input": "x", "stages": [ok_stage] * 9}, 422, "validation_error", "stages"),
        ("/api/model/pipeline", {"input": "", "stages": [ok_stage]}, 422, "validation_error", "input"),
        ("/api/model/pipeline", {"input": "x", "stages": [{**ok_stage, "top_p": 0}]}, 422, "validation_error", "stages"),
        ("/api/model/pipeline", {"input": "x", "stages": [ok_stage, {"prompt": "{nope}"}]}, 422, "validation_error",
         "stages[1].prompt"),
        ("/api/model/pipeline", {"input": "x", "stages": [ok_stage, {"prompt": "{stage_1}"}]}, 422, "validation_error",
         "stages[1].prompt"),
        ("/api/model/pipeline", {"input": "x", "stages": [{"prompt": "{stage_1}"}, ok_stage]}, 422, "validation_error",
         "stages[0].prompt"),
        ("/api/model/pipeline", {"input": "x", "stages": [{"prompt": "a } b"}]}, 422, "validation_error", "stages[0].prompt"),
        ("/api/model/pipeline", {"input": "x", "stages": [ok_stage, {**ok_stage, "model": "no-such"}]}, 404,
         "model_not_found", "stages[1].model"),
    ]  # fmt: skip
    for path, body, status, type_, param in cases:
        message = refused(post(stack, path, body), status, type_, param)
        if param and param.startswith("stages["):
            assert message.startswith(f"stage {param[7]}: "), message
    # What JSON parsers take but no field may hold: NaN, a lone surrogate.
    nan = '{"text": "x", "models": ["second"], "temperature": NaN}'
    refused(post(stack, "/api/model/parallel", nan), 422, "validation_error", "temperature")
    surrogate = '{"input": "\\ud800", "stages": [{"prompt": "{input}"}]}'
    refused(post(stack, "/api/model/pipeline", surrogate), 422, "validation_error", "input")
    surrogate_model = '{"text": "x", "models": ["\\udfff"]}'
    refused(post(stack, "/api/model/parallel", surrogate_model), 422, "validation_error", "models")
    no_json = httpx.post(f"{stack.url}/api/model/pipeline", content="input=x", timeout=30)
    refused(no_json, 415, "unsupported_media_type", None)
    # Nothing ran: a refused pipeline's first stages included.
    assert running_tasks(stack) == []


def test_a_keys_concurrency_limit_counts_one_generation_per_model_or_stage(stack, tiny):
    both = {"text": "x", "models": ["second", tiny], "max_tokens": 2, "cache": False}
    three = {"text": "x", "models": ["second", tiny, "third"], "max_tokens": 2}
    refused(post(stack, "/api/model/parallel", three), 400, "over_concurrency_limit", "models")
    stages = {"input": "x", "stages": [{"prompt": "{input}", "max_tokens": 2}] * 3}
    refused(post(stack, "/api/model/pipeline", stages), 400, "over_concurrency_limit", "stages")
    long = {"text": "A long one", "max_tokens": 100, "ignore_eos": True, "cache": False}
    with httpx.stream("POST", f"{stack.url}/api/model/stream", json=long, timeout=120) as running:
        assert running.status_code == 200
        lines = running.iter_lines()
        assert next(line for line in lines if line.startswith("event: token"))
        # One generation running: two more is over the limit of two; one more is not.
        r = post(stack, "/api/model/parallel", both)
        assert refused(r, 429, "concurrency_limited", None) and int(r.headers["retry-after"]) >= 1
        assert post(stack, "/api/model/parallel", {**both, "models": ["second"]}).status_code == 200
    assert post(stack, "/api/model/parallel", both).status_code == 200  # both slots free again
