"""/v1 request and response bodies, in the shapes OpenAI's clients (and vLLM) use.

Defaults are OpenAI's, not /api/model's: max_tokens 16 on completions and the rest of the
context on chat, temperature 1, top_p 1, n 1.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..json_values import UnicodeText
from ..schemas import UINT32_MAX, stop_list  # counts and ids wider than the wire are a 400, not an overflow

TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=UINT32_MAX)]], Field(min_length=1)]
Prompt = (
    UnicodeText | Annotated[list[UnicodeText], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
)

MAX_N = 16
MAX_LOGPROBS = 20


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(False, description="Send a last chunk with `usage` (and empty `choices`) before [DONE].")


class _SamplingFields(BaseModel):
    """What /v1/completions and /v1/chat/completions share."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: UnicodeText = Field(description="The served model's id (GET /v1/models), or an alias of it.")
    max_tokens: int | None = Field(
        16, ge=1, le=UINT32_MAX, description="Tokens to generate at most; null: as many as the context leaves."
    )
    temperature: float | None = Field(1.0, ge=0.0, le=2.0, description="0 is greedy; null: 1.")
    top_p: float | None = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling; 1 (or null) is off.")
    n: int | None = Field(1, ge=1, le=MAX_N, description="Completions per prompt.")
    # The order of schemas.ProcessRequest's `stop`: typing caches equal unions, so
    # the first one built would set the order of both in the OpenAPI document.
    stop: list[UnicodeText] | UnicodeText | None = Field(
        None, validate_default=True, description="Generation ends before any of these (at most 16)."
    )
    seed: int | None = Field(None, ge=0, lt=2**63, description="Makes sampling repeatable; choice j uses a seed derived from it.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(0.0, ge=-2.0, le=2.0, description="Not supported: only 0.")
    frequency_penalty: float | None = Field(0.0, ge=-2.0, le=2.0, description="Not supported: only 0.")
    logit_bias: dict[str, float] | None = Field(None, description="Not supported: only null or {}.")
    user: UnicodeText | None = Field(None, description="Accepted and ignored.")
    # vLLM's extras
    top_k: int | None = Field(None, ge=-1, le=UINT32_MAX, description="vLLM extra: 0 or -1 (or null) is off.")
    min_tokens: int = Field(0, ge=0, le=UINT32_MAX, description="vLLM extra: no end-of-text before this many tokens.")
    ignore_eos: bool = Field(False, description="vLLM extra: keep generating past the end-of-text token.")
    cache_salt: UnicodeText | None = Field(
        None, min_length=1, max_length=256,
        description="vLLM extra: share cached results with any key passing the same salt (default: this key's own only).",
    )  # fmt: skip

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: list[str] | str | None) -> list[str]:
        return stop_list(v)


class CompletionRequest(_SamplingFields):
    prompt: Prompt = Field(description="A string, a list of strings, token ids, or a list of token-id lists.")
    logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS, description="Each token's log-probability and this many most likely alternatives."
    )
    echo: bool | None = Field(False, description="Prepend the prompt to each choice's text.")
    suffix: UnicodeText | None = Field(None, description="Not supported: only null.")
    best_of: int | None = Field(None, ge=1, description="Not supported beyond n: only null or equal to n.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: UnicodeText | None = None
    name: UnicodeText | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    # Chat's default is the rest of the context (OpenAI's chat API, vLLM), not completions' 16.
    max_tokens: int | None = Field(
        None, ge=1, le=UINT32_MAX, description="Tokens to generate at most; default (null): as many as the context leaves."
    )
    logprobs: bool | None = Field(False, description="Not supported on chat: only false.")
    top_logprobs: int | None = Field(None, description="Not supported on chat: only null.")
    max_completion_tokens: int | None = Field(None, ge=1, le=UINT32_MAX, description="Takes precedence over max_tokens.")


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completions shape: parallel lists, one entry per generated token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


FinishReason = Literal["stop", "length", "abort"]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = Field(
        None, description='"stop" (end-of-text or a stop string), "length", "abort" (cancelled); null in a stream until the end.'
    )


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: None = None
    finish_reason: FinishReason | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class ReplicaMemory(BaseModel):
    id: str
    status: str
    weight_bytes: int = Field(description="bytes of weights it holds; 0 while it is not SERVING")
    resident_bytes: int = Field(description="its process's resident memory (RSS) as last read; 0 while it is not SERVING")


class PartitionCard(BaseModel):
    partition: int
    layers: list[int] | None = Field(description="[start, end) blocks; null until a node of it has said")
    nodes: list[str] = Field(description="ids of its replicas")
    serving: int = Field(description="replicas now SERVING")
    replicas: list[ReplicaMemory] = Field(description="its replicas, in `nodes`' order, with their memory")


class SplitgptModelInfo(BaseModel):
    model_id: str = Field(description="The checkpoint the coordinator serves.")
    n_ctx: int
    partitions: list[PartitionCard]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "splitgpt"
    root: str | None = None
    max_model_len: int | None = None
    splitgpt: SplitgptModelInfo | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error | authentication_error | rate_limit_error | server_error | ...")
    param: str | None = None
    code: str | None = Field(None, description="What exactly: model_not_found, context_length_exceeded, validation_error, ...")


class OpenAIErrorResponse(BaseModel):
    """Every error on /v1, in OpenAI's shape."""

    error: OpenAIErrorBody
