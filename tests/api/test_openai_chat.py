"""/v1/chat/completions over the documented GPT-2 template, with the official client."""

from __future__ import annotations

import openai
import pytest

from splitgpt.api.openai.protocol import ChatCompletionRequest
from splitgpt.api.openai.serving import chat_prompt

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is two plus two?"},
]


def test_the_template():
    request = ChatCompletionRequest(model="m", messages=MESSAGES)
    assert chat_prompt(request) == "You are terse.\nUser: Hi there\nAssistant: Hello.\nUser: What is two plus two?\nAssistant:"


def test_chat_equals_a_completion_of_the_template(client, model):
    out = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10, temperature=0)
    assert out.object == "chat.completion" and out.model == model
    [choice] = out.choices
    assert choice.message.role == "assistant"
    prompt = chat_prompt(ChatCompletionRequest(model=model, messages=MESSAGES))
    raw = client.completions.create(model=model, prompt=prompt, max_tokens=10, temperature=0, stop=["\nUser:"])
    assert choice.message.content == raw.choices[0].text.lstrip()
    assert choice.finish_reason == raw.choices[0].finish_reason
    assert out.usage.prompt_tokens == raw.usage.prompt_tokens
    assert out.usage.completion_tokens == raw.usage.completion_tokens


def test_streamed_chat_equals_the_whole_one(client, model):
    whole = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_chat_without_max_tokens_generates_to_the_end_of_the_context(client, model):
    out = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, extra_body={"ignore_eos": True})
    context = client.models.retrieve(model).model_extra["splitgpt"]["n_ctx"]
    assert out.usage.total_tokens == context and out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens > 16  # completions' default, which chat no longer takes


def test_chat_errors(client, model):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, logprobs=True)
    assert exc.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=[], max_tokens=2)
