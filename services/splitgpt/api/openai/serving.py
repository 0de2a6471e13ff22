"""/v1 requests onto GenerationService: one run per choice, the same engine,
batching, cache and cancellation as /api/model/*.

A request of P prompts and n choices each is P * n runs, started together (the
coordinator batches them); choice `prompt_i * n + j` is run j of prompt i.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from .. import context_limits
from ..cached_result import TextDelta
from ..errors import ApiError
from ..generation import Done, GenerationService
from ..schemas import ClusterResponse, ModelInfo, ProcessRequest
from .protocol import (
    ChatCompletionRequest,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    ModelCard,
    PartitionCard,
    ReplicaMemory,
    SplitgptModelInfo,
    UsageInfo,
)

CHAT_STOP = "\nUser:"
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "abort"}
_GOLDEN = 0x9E3779B97F4A7C15


def choice_seed(seed: int | None, j: int) -> int | None:
    """Choice j's seed: the request's own for j = 0, distinct derived ones after it."""
    if seed is None or j == 0:
        return seed
    return (seed + j * _GOLDEN) % 2**63


def chat_prompt(request: ChatCompletionRequest) -> str:
    """GPT-2 has no chat format; this plain one: a system (or developer) message
    as a line of its own, then `User: ...` / `Assistant: ...` lines, ending in
    `Assistant:` for the model to continue. Generation stops at "\\nUser:"."""
    lines = []
    for m in request.messages:
        content = m.content or ""
        if m.role in ("system", "developer"):
            lines.append(content)
        else:
            lines.append(f"{'User' if m.role == 'user' else 'Assistant'}: {content}")
    lines.append("Assistant:")
    return "\n".join(lines)


@dataclass
class Prompt:
    ids: list[int]
    text: str | None  # None: given as token ids (decoded only if echo needs it)


@dataclass
class Choice:
    index: int
    prompt: Prompt
    body: ProcessRequest
    echo: str = ""  # prepended to the text
    deltas: list[TextDelta] = field(default_factory=list)
    done: Done | None = None


class OpenAIServing:
    def __init__(self, generation: GenerationService, served_model_name: str | None) -> None:
        self.generation = generation
        self.backends = generation.backends
        self.served_model_name = served_model_name  # the default model's name here, when set
        self.model: str | None = None  # the coordinator's name of the model asked for (check_model); None: the default

    # -- models ---------------------------------------------------------------

    def display_name(self, info: ModelInfo, default: bool) -> str:
        return (self.served_model_name if default else None) or info.name or info.model_id

    async def check_model(self, name: str) -> str:
        """Route to the model `name` calls (its name, its checkpoint's id or that id's
        basename; the default model also by SPLITGPT_API_SERVED_MODEL_NAME) and return the
        name responses carry; 404 `model_not_found`, listing the served names, for any other."""
        models = await self.backends.models()
        for i, info in enumerate(models):
            shown = self.display_name(info, i == 0)
            if name in {shown, info.name, info.model_id, info.model_id.rstrip("/").rsplit("/", 1)[-1]}:
                self.model = info.name
                return shown
        served = ", ".join(f"`{self.display_name(m, i == 0)}`" for i, m in enumerate(models))
        raise ApiError(404, "model_not_found", f"the model `{name}` does not exist: this server serves {served}", "model")

    async def model_cards(self) -> list[ModelCard]:
        models = await self.backends.models()
        cluster = await self.backends.cluster()
        return [self._card(info, i == 0, cluster) for i, info in enumerate(models)]

    async def model_card(self) -> ModelCard:
        """The card of the model check_model chose."""
        models = await self.backends.models()
        cluster = await self.backends.cluster()
        index = next((i for i, m in enumerate(models) if m.name == self.model), 0)
        return self._card(models[index], index == 0, cluster)

    def _card(self, info: ModelInfo, default: bool, cluster: ClusterResponse) -> ModelCard:
        parts: dict[int, PartitionCard] = {}
        for node in cluster.nodes:
            if node.model and node.model != info.name:
                continue
            card = parts.setdefault(
                node.partition, PartitionCard(partition=node.partition, layers=None, nodes=[], serving=0, replicas=[])
            )
            card.nodes.append(node.id)
            card.replicas.append(
                ReplicaMemory(id=node.id, status=node.status, weight_bytes=node.weight_bytes, resident_bytes=node.resident_bytes)
            )
            card.layers = card.layers or node.layers
            card.serving += node.status == "SERVING"
        return ModelCard(
            id=self.display_name(info, default),
            created=int(time.time()),
            root=info.model_id,
            max_model_len=info.n_ctx,
            splitgpt=SplitgptModelInfo(model_id=info.model_id, n_ctx=info.n_ctx, partitions=[parts[p] for p in sorted(parts)]),
        )

    # -- completions ----------------------------------------------------------

    async def completion_choices(self, request: CompletionRequest) -> list[Choice]:
        if request.echo and request.logprobs is not None:
            raise ApiError(
                400, "unsupported", "echo with logprobs is not supported (no log-probabilities of prompt tokens)", "echo"
            )
        _unsupported(request)
        if request.suffix is not None:
            raise ApiError(400, "unsupported", "suffix is not supported", "suffix")
        if request.best_of is not None and request.best_of != (request.n or 1):
            raise ApiError(400, "unsupported", "best_of is not supported (except equal to n)", "best_of")
        prompts = await self._prompts(request.prompt)
        choices = await self._choices(request, prompts)
        if request.echo:
            for c in choices:
                c.echo = c.prompt.text if c.prompt.text is not None else await self._decode(c.prompt.ids)
        return choices

    async def chat_choices(self, request: ChatCompletionRequest) -> list[Choice]:
        _unsupported(request)
        if request.logprobs or request.top_logprobs is not None:
            raise ApiError(400, "unsupported", "logprobs are not supported on chat completions (use /v1/completions)", "logprobs")
        if request.max_completion_tokens is not None:
            request = request.model_copy(update={"max_tokens": request.max_completion_tokens})
        request = request.model_copy(update={"stop": [*[s for s in request.stop if s != CHAT_STOP][:15], CHAT_STOP]})
        prompts = await self._prompts(chat_prompt(request))
        return await self._choices(request, prompts)

    async def _prompts(self, prompt) -> list[Prompt]:
        model = await self.backends.model_info(self.model)
        if isinstance(prompt, str):
            prompt = [prompt]
        elif prompt and isinstance(prompt[0], int):
            prompt = [prompt]
        out = []
        for p in prompt:
            if isinstance(p, str):
                if not p:
                    raise ApiError(400, "invalid_prompt", "a prompt must not be empty", "prompt")
                context_limits.check_prompt_chars(p, model, await self.backends.max_chars_per_token(model.name))
                out.append(Prompt(await self.backends.encode(p, model.name), p))
            else:
                out.append(Prompt(list(p), None))
        return out

    async def _choices(self, request, prompts: list[Prompt]) -> list[Choice]:
        model = await self.backends.model_info(self.model)
        n = request.n or 1
        temperature = 1.0 if request.temperature is None else request.temperature
        choices = []
        for i, prompt in enumerate(prompts):
            max_tokens = request.max_tokens
            if max_tokens is None:  # as many as the context leaves (at least 1: a full prompt gets its 400)
                max_tokens = max(1, model.n_ctx - len(prompt.ids))
            for j in range(n):
                body = ProcessRequest(
                    text=prompt.text or "<token ids>",
                    model=self.model,
                    max_tokens=max_tokens,
                    min_tokens=request.min_tokens,
                    temperature=temperature,
                    top_k=max(0, request.top_k or 0),
                    top_p=1.0 if request.top_p is None else request.top_p,
                    seed=choice_seed(request.seed, j),
                    stop=request.stop,
                    ignore_eos=request.ignore_eos,
                    cache_salt=request.cache_salt,
                )
                choices.append(Choice(i * n + j, prompt, body))
        return choices

    async def _decode(self, ids: list[int]) -> str:
        decoder = await self.backends.decode_stream((await self.backends.model_info(self.model)).name)
        try:
            return await decoder.push(ids) + await decoder.flush()
        finally:
            decoder.cancel()

    def runs(self, choices: list[Choice], request_id: str, logprobs: int | None) -> list[AsyncIterator[TextDelta | Done]]:
        return [
            self.generation.stream(c.body, f"{request_id}-{c.index}", prompt_ids=c.prompt.ids, logprobs=logprobs) for c in choices
        ]

    async def run_all(self, choices: list[Choice], request_id: str, logprobs: int | None) -> None:
        """Every choice to its end, together; the first failure cancels the others."""

        async def one(choice: Choice, events: AsyncIterator[TextDelta | Done]) -> None:
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, Done):
                        choice.done = event
                    else:
                        choice.deltas.append(event)

        tasks = [asyncio.ensure_future(one(c, e)) for c, e in zip(choices, self.runs(choices, request_id, logprobs), strict=True)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def logprobs(self, deltas: list[TextDelta], start_offset: int) -> CompletionLogprobs:
        """OpenAI's legacy shape for the tokens of `deltas` (text held back to the end has no token)."""
        tokens = [d for d in deltas if d.token_id >= 0]
        ids = sorted({d.token_id for d in tokens} | {t for d in tokens for t, _ in d.top_logprobs})
        names = (
            dict(zip(ids, await self.backends.token_texts(ids, (await self.backends.model_info(self.model)).name), strict=True))
            if ids
            else {}
        )
        out = CompletionLogprobs()
        offset = start_offset
        for d in tokens:
            text = names[d.token_id]
            top = {names[t]: lp for t, lp in d.top_logprobs}
            top.setdefault(text, d.logprob)
            out.tokens.append(text)
            out.token_logprobs.append(d.logprob)
            out.top_logprobs.append(top)
            out.text_offset.append(offset)
            offset += len(text)
        return out

    async def completion_choice(self, c: Choice, logprobs: int | None) -> CompletionChoice:
        text = "".join(d.text for d in c.deltas)
        return CompletionChoice(
            index=c.index,
            text=c.echo + text,
            logprobs=await self.logprobs(c.deltas, len(c.echo)) if logprobs is not None else None,
            finish_reason=finish_reason(c.done),
        )


def finish_reason(done: Done | None) -> str:
    return FINISH_REASONS.get(done.response.finish_reason, "stop") if done else "length"


def usage(choices: list[Choice]) -> UsageInfo:
    """Each prompt counted once (as OpenAI does for n > 1), every choice's completion tokens."""
    prompt_tokens = sum(len(c.prompt.ids) for c in choices if c.index % _n(choices) == 0)
    completion = sum(c.done.response.usage.completion_tokens for c in choices if c.done)
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion)


def _n(choices: list[Choice]) -> int:
    prompts = {id(c.prompt) for c in choices}
    return max(1, len(choices) // max(1, len(prompts)))


def _unsupported(request) -> None:
    if request.presence_penalty:
        raise ApiError(400, "unsupported", "presence_penalty is not supported (only 0)", "presence_penalty")
    if request.frequency_penalty:
        raise ApiError(400, "unsupported", "frequency_penalty is not supported (only 0)", "frequency_penalty")
    if request.logit_bias:
        raise ApiError(400, "unsupported", "logit_bias is not supported (only null or {})", "logit_bias")
    if request.min_tokens and request.max_tokens is not None and request.min_tokens > request.max_tokens:
        raise ApiError(400, "validation_error", "min_tokens must not exceed max_tokens", "min_tokens")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
