"""The OpenAI-compatible API (/v1) with the official `openai` client, against the real stack."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.hf_reference import hf_text

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_checkpoint):
    return AutoTokenizer.from_pretrained(tiny_checkpoint)


def process(api, prompt: str, max_tokens: int, **extra) -> dict:
    r = api.post("/api/model/process", json={"text": prompt, "max_tokens": max_tokens, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_models_lists_the_served_model_with_its_partitions(client, model, stack):
    listing = client.models.list()
    assert [m.id for m in listing.data] == [model]
    card = listing.data[0].model_dump()
    assert card["object"] == "model"
    parts = card["splitgpt"]["partitions"]
    assert [p["partition"] for p in parts] == [0, 1, 2]
    assert parts[0]["layers"][0] == 0 and all(p["serving"] >= 1 and p["nodes"] for p in parts)
    # Each replica's weights and resident memory, in its nodes' order: the split's cost in bytes.
    for p in parts:
        assert [r["id"] for r in p["replicas"]] == p["nodes"]
        assert all(r["weight_bytes"] > 0 and r["resident_bytes"] > r["weight_bytes"] for r in p["replicas"])
    assert client.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("no-such-model")
    assert exc.value.code == "model_not_found"


def test_greedy_completion_equals_api_process_and_hf(client, model, api, hf_model, hf_tokenizer):
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=20, temperature=0)
    assert out.object == "text_completion" and out.model == model and out.id
    [choice] = out.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length")
    assert choice.text == process(api, PROMPT, 20)["generated_text"] == hf_text(hf_model, hf_tokenizer, PROMPT, 20)
    n_prompt = len(hf_tokenizer(PROMPT)["input_ids"])
    assert out.usage.prompt_tokens == n_prompt
    assert out.usage.total_tokens == n_prompt + out.usage.completion_tokens


def test_default_max_tokens_is_16(client, model):
    out = client.completions.create(model=model, prompt="Hello", temperature=0, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 16 and out.choices[0].finish_reason == "length"


def test_streamed_greedy_completion_equals_the_whole_one(client, model, api):
    chunks = list(
        client.completions.create(
            model=model,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    text_chunks = [c for c in chunks if c.choices]
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in text_chunks) == process(api, PROMPT, 12, ignore_eos=True)["generated_text"]
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == 12


def test_raw_stream_ends_with_done(stack):
    body = {"model": "ignored", "prompt": "Hi", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{stack.url}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 404  # unknown model: refused before the stream starts
    model = httpx.get(f"{stack.url}/v1/models", timeout=30).json()["data"][0]["id"]
    with httpx.stream("POST", f"{stack.url}/v1/completions", json={**body, "model": model}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    for line in lines[:-1]:
        assert "usage" not in json.loads(line[6:])  # not asked for


def test_a_list_of_prompts_and_n_order_choices_prompt_major(client, model, api):
    prompts = ["Hello, my name is", "In 1969, the first"]
    out = client.completions.create(model=model, prompt=prompts, n=2, max_tokens=8, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for i, p in enumerate(prompts):
        expected = process(api, p, 8)["generated_text"]
        assert out.choices[2 * i].text == out.choices[2 * i + 1].text == expected  # greedy choices are equal


def test_seeded_choices_differ_and_repeat(client, model):
    kwargs = dict(model=model, prompt="Once upon a time", n=3, max_tokens=12, temperature=1.0, seed=7)
    first = [c.text for c in client.completions.create(**kwargs, extra_body={"ignore_eos": True}).choices]
    again = [c.text for c in client.completions.create(**kwargs, extra_body={"ignore_eos": True}).choices]
    assert first == again
    assert len(set(first)) == 3


def test_token_id_prompts_equal_text_prompts(client, model, hf_tokenizer):
    ids = [hf_tokenizer(p)["input_ids"] for p in ("Hello, my name is", PROMPT)]
    by_ids = client.completions.create(model=model, prompt=ids, max_tokens=6, temperature=0)
    by_text = client.completions.create(model=model, prompt=["Hello, my name is", PROMPT], max_tokens=6, temperature=0)
    assert [c.text for c in by_ids.choices] == [c.text for c in by_text.choices]
    single = client.completions.create(model=model, prompt=ids[1], max_tokens=6, temperature=0)
    assert single.choices[0].text == by_text.choices[1].text
    assert single.usage.prompt_tokens == len(ids[1])


def test_logprobs_have_top_alternatives(client, model, hf_model, hf_tokenizer):
    import torch

    out = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3, extra_body={"ignore_eos": True}
    )
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    ids = hf_tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        greedy = hf_model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=50256)[0, ids.shape[1] :]
    assert lp.tokens == [hf_tokenizer.decode([t]) for t in greedy.tolist()]  # each token's own text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value <= 0 and all(v <= 0 for v in top.values())
        assert 3 <= len(top) <= 4
        best = max(top, key=top.get)
        assert best == token and math.isclose(top[best], value, abs_tol=1e-4)  # greedy: the top-1 is the chosen one
    # The values are the model's own distribution (log_softmax of the raw logits).
    with torch.no_grad():
        first = torch.log_softmax(hf_model(ids).logits[0, -1].float(), -1)
    assert math.isclose(lp.token_logprobs[0], float(first.max()), abs_tol=1e-3)


def test_sampled_logprobs_are_of_the_model_not_of_the_temperature(client, model):
    out = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=4, temperature=1.5, seed=3, logprobs=2, extra_body={"ignore_eos": True}
    )
    lp = out.choices[0].logprobs
    assert all(v <= 0 for v in lp.token_logprobs)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert top[token] == pytest.approx(value)
        assert max(top.values()) >= value


def test_streamed_logprobs_per_token(client, model):
    chunks = list(
        client.completions.create(
            model=model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=1, stream=True, extra_body={"ignore_eos": True}
        )
    )
    with_lp = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert len(with_lp) == 5
    assert [lp.text_offset[0] for lp in with_lp] == [sum(len(x.tokens[0]) for x in with_lp[:i]) for i in range(5)]


def test_echo_prepends_the_prompt(client, model, api):
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    assert out.choices[0].text == PROMPT + process(api, PROMPT, 5)["generated_text"]
    streamed = client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == out.choices[0].text


def test_stop_strings(client, model):
    whole = client.completions.create(model=model, prompt=PROMPT, max_tokens=20, temperature=0, extra_body={"ignore_eos": True})
    text = whole.choices[0].text
    stop = text[5:8]
    assert stop.strip()
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop])
    assert out.choices[0].text == text[: text.index(stop)] and out.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "extra",
    [
        {"temperature": 3},
        {"n": 0},
        {"logprobs": 99},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 1},
        {"logit_bias": {"50256": -100}},
        {"echo": True, "logprobs": 1},
        {"suffix": "x"},
        {"not_a_field": 1},
        # wider than the wire's uint32: refused, never an overflow when encoded
        {"top_k": 10**400},
        {"min_tokens": 10**400},
        {"max_completion_tokens": 10**400},
    ],
)
def test_bad_or_unsupported_fields_are_400_naming_the_field(client, model, extra):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=model, prompt="Hi", max_tokens=2, extra_body=extra)
    body = exc.value.body
    assert set(body) >= {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    assert body["param"] == next(iter(extra))


def test_a_token_id_wider_than_the_wire_is_a_400(client, model):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=model, prompt=[[1, 10**400]], max_tokens=2)
    assert exc.value.body["param"].startswith("prompt")


def test_a_request_of_more_prompts_or_generations_than_the_caps_is_a_400(client, model, stack):
    """The default caps (64 prompts, 64 prompts x n) are answered before anything is tokenized:
    a MiB of one-token prompts is refused at once, not after building every generation."""
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=model, prompt=[[15496]] * 100_000, max_tokens=1)
    assert exc.value.code == "too_many_prompts" and exc.value.body["param"] == "prompt"
    assert "100000 prompts" in exc.value.message and "at most 64" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=model, prompt=["Hi"] * 5, n=16, max_tokens=1)
    assert exc.value.code == "too_many_generations" and exc.value.body["param"] == "n"
    assert "80 generations" in exc.value.message
    # At the cap it runs: 4 prompts x n=16.
    assert len(client.completions.create(model=model, prompt=["Hi"] * 4, n=16, max_tokens=1).choices) == 64


def test_unknown_model_is_404_in_openai_shape(client, stack):
    with pytest.raises(openai.NotFoundError) as exc:
        client.completions.create(model="gpt-5", prompt="Hi", max_tokens=2)
    assert exc.value.code == "model_not_found" and exc.value.body["param"] == "model"
    r = httpx.get(f"{stack.url}/v1/no-such-route", timeout=30)
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{stack.url}/api/no-such-route", timeout=30)  # /api keeps its own shape
    assert r.status_code == 404 and "code" not in r.json()["error"]


def test_context_overflow_is_a_400(client, model):
    n_ctx = client.models.retrieve(model).model_dump()["max_model_len"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=model, prompt=PROMPT, max_tokens=n_ctx - 1)
    assert exc.value.code == "context_length_exceeded" and exc.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=model, prompt="Hi", max_tokens=100_000)
    assert exc.value.body["param"] == "max_tokens"


def test_basename_alias_is_accepted(client, model, stack):
    info = httpx.get(f"{stack.url}/v1/models", timeout=30).json()["data"][0]
    alias = info["root"].rstrip("/").rsplit("/", 1)[-1]
    out = client.completions.create(model=alias, prompt="Hi", max_tokens=2, temperature=0)
    assert out.model == model


def test_a_body_over_the_limit_is_413_in_openai_shape(stack):
    r = httpx.post(
        f"{stack.url}/v1/completions",
        content=b'{"prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}',
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large" and r.json()["error"]["type"] == "invalid_request_error"
