"""The REST contract: request and response bodies of every route, and the one error shape."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..core.cluster_config import MODEL_NAME_PATTERN
from .json_values import JsonObject, UnicodeText

# The widest integer the wire takes for counts (uint32 in protos/): larger
# values are a 422 here, not an overflow when the request is encoded.
UINT32_MAX = 2**32 - 1
MAX_STOPS = 16


def stop_list(v: list[str] | str | None) -> list[str]:
    """`stop` as one list, for /api and /v1 alike: a string or a list, none empty, at most 16."""
    stops = [v] if isinstance(v, str) else list(v or [])
    if any(not s for s in stops):
        raise ValueError("stop strings must not be empty")
    if len(stops) > MAX_STOPS:
        raise ValueError(f"at most {MAX_STOPS} stop strings")
    return stops


class ProcessRequest(BaseModel):
    # strict: "3", true and 2.0 are not integers, "yes" is not a boolean (a
    # float field still takes a JSON integer). allow_inf_nan: NaN/Infinity/1e309
    # parse as floats in Python's JSON but are no valid setting.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    text: UnicodeText = Field(min_length=1, description="The prompt.")
    model: str | None = Field(
        None,
        pattern=MODEL_NAME_PATTERN,
        description="The model to run it on, by name (GET /v1/models lists them); absent: the default (first) model.",
    )
    metadata: JsonObject | None = Field(None, description="A JSON object echoed back untouched (nested at most 32 deep).")
    max_tokens: int = Field(64, ge=1, le=UINT32_MAX, description="Tokens to generate at most (also bounded by the context).")
    min_tokens: int = Field(0, ge=0, le=UINT32_MAX, description="EOS is not accepted before this many tokens.")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 is greedy.")
    top_k: int = Field(0, ge=0, le=UINT32_MAX, description="0 turns top-k off.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="1 turns nucleus sampling off.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Makes sampling repeatable.")
    stop: list[UnicodeText] | UnicodeText | None = Field(
        None, validate_default=True, description="Generation ends before any of these strings (at most 16)."
    )
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-text token.")
    cache: bool = Field(True, description="false: skip the result cache for this request (neither looked up nor stored).")
    cache_salt: UnicodeText | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Share cached results with requests of any key that pass the same salt; "
        "without one, a key is served only its own cached results.",
    )

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: list[str] | str | None) -> list[str]:
        return stop_list(v)

    @property
    def deterministic(self) -> bool:
        return self.temperature == 0.0 or self.seed is not None

    def sampling_key(self) -> dict:
        """Every field that can change the generated text (the cache key's parameters)."""
        # `model` is not here: the key names the model as resolved (a default by any of its names is one model).
        return self.model_dump(exclude={"text", "metadata", "cache", "cache_salt", "model"})


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class PartitionTimingOut(BaseModel):
    partition: int
    node: str
    ms: float


class Timings(BaseModel):
    total_ms: float
    tokenize_ms: float
    inference_ms: float
    partitions: list[PartitionTimingOut]


class ProcessResponse(BaseModel):
    generated_text: str
    finish_reason: str = Field(description='"length" | "eos" | "stop" | "cancelled"')
    usage: Usage
    cached: bool
    timings: Timings
    request_id: str
    model: str
    metadata: dict | None = None


class StreamToken(BaseModel):
    """The data of one `token` event of /api/model/stream."""

    text: str = Field(description="The text this token completes (may be empty: half a character, a possible stop string).")
    token_id: int = Field(description="-1 for text released at the end that no single token completed.")
    index: int


def sse_schema(events: list[tuple[str, dict, str]]) -> dict:
    """One server-sent event of a stream whose events are (name, data schema, when) (OpenAPI 3.1:
    the `schema` of text/event-stream is per event)."""

    def event(name: str, data: dict, description: str) -> dict:
        return {
            "description": description,
            "properties": {"event": {"const": name}, "data": {"contentMediaType": "application/json", "contentSchema": data}},
        }

    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {"event": {"type": "string", "enum": [name for name, _, _ in events]}, "data": {"type": "string"}},
        "oneOf": [event(*e) for e in events],
    }


def sse_event_schema() -> dict:
    """One server-sent event of /api/model/stream."""
    return sse_schema(
        [
            ("token", StreamToken.model_json_schema(), "One per generated token, in order."),
            ("done", {"$ref": "#/components/schemas/ProcessResponse"}, "The last event: the whole response."),
            (
                "error",
                {"$ref": "#/components/schemas/ErrorResponse"},
                "The last event, instead of `done`, when the generation fails after the 200 status line.",
            ),
        ]
    )


class ErrorBody(BaseModel):
    type: str = Field(description="What kind of error, e.g. validation_error, context_length_exceeded, overloaded.")
    message: str = Field(description="What went wrong and what to change.")
    param: str | None = Field(None, description="The request field at fault, where there is one.")


class ErrorResponse(BaseModel):
    """The body of every error response, on every route."""

    error: ErrorBody


class ModelInfo(BaseModel):
    """What the gateway knows of a served model (from the coordinator)."""

    name: str = Field("", description="What requests call it (`model`).")
    model_id: str = Field(description="The checkpoint its nodes load.")
    n_ctx: int
    vocab_size: int
    eos_token_id: int
    n_layer: int = 0
    num_partitions: int = 0
    ready: bool = Field(True, description="Every partition of its current split has a SERVING node.")
    split_generation: int = Field(0, description="Its current split: the one new requests go to.")


class NodeOut(BaseModel):
    id: str
    address: str
    partition: int
    layers: list[int] | None = Field(description="[start, end) blocks; null until the node has said")
    status: str = Field(description="SERVING | NOT_SERVING | UNKNOWN | UNREACHABLE | MISCONFIGURED")
    circuit: str = Field(description="closed | open")
    consecutive_failures: int
    in_flight: int
    latency_ewma_ms: float | None
    weight_bytes: int = Field(description="bytes of weights the node holds; 0 while it is not SERVING")
    resident_bytes: int = Field(
        description="the node process's resident memory (RSS) as last read (every few seconds); 0 while it is not SERVING"
    )
    model: str = Field("", description="the name of the model it serves")
    num_partitions: int = Field(0, description="partitions of the split it belongs to")
    split_generation: int = Field(0, description="which split of its model (a rollout adds one)")
    lifecycle: str | None = Field(
        None, description="online | busy | offline | error | cordoned | draining (README: Node management)"
    )
    cordoned: bool = False
    draining: bool = False
    cpu_percent: float = Field(0.0, description="CPU use of its process, percent of one core, over the last few seconds")
    kv_tokens: int = Field(0, description="positions its KV cache holds")
    kv_max_tokens: int = Field(0, description="its KV budget in positions")
    sequences: int = Field(0, description="running sequences whose chain goes through it")


class ClusterResponse(BaseModel):
    model: str = Field(description="the default model's checkpoint")
    models: list[ModelInfo] = Field(default_factory=list, description="every model served, the default first")
    nodes: list[NodeOut]


class TaskOut(BaseModel):
    request_id: str
    state: str = Field(description="queued | prefill | decode")
    prompt_tokens: int
    generated_tokens: int
    max_tokens: int
    age_s: float
    chain: list[str] = Field(description="node ids, partition 0 first")
    replays: int
    model: str = ""
    migrations: int = Field(0, description="times its K/V moved to another replica (a drain)")


class TasksResponse(BaseModel):
    tasks: list[TaskOut]


class CancelResponse(BaseModel):
    request_id: str
    cancelled: bool


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    tokenizer: str
    coordinator: str
    partitions: dict[str, bool] = Field(description="partition -> whether it has a SERVING node")
    error: ErrorBody | None = Field(None, description="When not ready: what is missing (the one error shape).")
