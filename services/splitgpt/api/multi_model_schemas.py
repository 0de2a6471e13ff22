"""Bodies of the routes across models: /api/model/parallel and /api/model/pipeline.

Their generation fields (max_tokens, temperature, stop, seed, cache, ...) are
ProcessRequest's own, taken from its definition (`GenerationFields`), so a
field added there is taken here too, with the same limits and checks; each
model or stage then runs on a ProcessRequest built from them.
"""

from __future__ import annotations

from copy import copy
from typing import Annotated, Literal

from pydantic import BaseModel, Field, create_model, field_validator

from ..core.cluster_config import MODEL_NAME_PATTERN
from .json_values import UnicodeText
from .schemas import ProcessRequest, ProcessResponse, StreamToken, sse_schema, stop_list

MAX_MODELS = 8
MAX_STAGES = 8

# Every field of ProcessRequest but the prompt and the model: the routes here name those their own way.
NOT_GENERATION_FIELDS = frozenset({"text", "model"})
GENERATION_FIELD_NAMES = frozenset(ProcessRequest.model_fields) - NOT_GENERATION_FIELDS


def _stops(cls, v: list[str] | str | None) -> list[str]:
    return stop_list(v)


# ProcessRequest's fields (their FieldInfo: type, bounds, description), its strictness and its `stop` check.
GenerationFields = create_model(
    "GenerationFields",
    __config__=ProcessRequest.model_config,
    __doc__="The generation fields of ProcessRequest, applied to every model or stage.",
    __validators__={"_stops": field_validator("stop")(_stops)},
    **{
        name: (field.annotation, copy(field))
        for name, field in ProcessRequest.model_fields.items()
        if name in GENERATION_FIELD_NAMES
    },
)

ModelName = Annotated[UnicodeText, Field(pattern=MODEL_NAME_PATTERN)]


class ParallelRequest(GenerationFields):
    text: UnicodeText = copy(ProcessRequest.model_fields["text"])
    models: list[ModelName] = Field(
        min_length=1,
        max_length=MAX_MODELS,
        description=f"The models to run `text` on, by name (GET /api/models lists them): 1 to {MAX_MODELS}, distinct.",
    )
    aggregate: Literal["all", "first"] = Field(
        "all",
        description='"all": every model\'s result, in the order of `models`. "first": the first model to finish; '
        "the others are cancelled.",
    )
    stream: bool = Field(
        False,
        description='With aggregate "first" only: server-sent events of the model that produces its first token '
        "first (the others are cancelled then).",
    )

    @field_validator("models")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in seen:
                raise ValueError(f"must be distinct: models[{i}] repeats models[{seen[name]}]")
            seen[name] = i
        return names


class PipelineStage(GenerationFields):
    model: str | None = copy(ProcessRequest.model_fields["model"])
    prompt: UnicodeText = Field(
        min_length=1,
        description="A template: `{input}` is the pipeline's input, `{stage_N}` the text stage N generated "
        "(N earlier than this stage); `{{` and `}}` are literal braces. Any other `{...}` is refused.",
    )


class PipelineRequest(BaseModel):
    model_config = ProcessRequest.model_config

    stages: list[PipelineStage] = Field(
        min_length=1, max_length=MAX_STAGES, description=f"1 to {MAX_STAGES} stages, run in order."
    )
    input: UnicodeText = Field(min_length=1, description="What `{input}` stands for in the stages' prompts.")


class ParallelTimings(BaseModel):
    total_ms: float = Field(description="The whole request, every model included.")


class ParallelAllResponse(BaseModel):
    """aggregate "all": one result per model."""

    results: list[ProcessResponse] = Field(description="One per entry of `models`, in that order.")
    aggregate: Literal["all"] = "all"
    timings: ParallelTimings


class ParallelFirstResponse(ProcessResponse):
    """aggregate "first": the winner's result (`model` names it), and which models were cancelled."""

    aggregate: Literal["first"] = "first"
    index: int = Field(description="The winner's position in `models`.")
    cancelled: list[str] = Field(
        description="The other entries of `models`, as asked, in their order: each is cancelled where it still runs."
    )


ParallelResponse = Annotated[ParallelAllResponse | ParallelFirstResponse, Field(discriminator="aggregate")]


class ParallelStreamStart(BaseModel):
    """The data of the first event of a parallel stream: which model won the race to the first token."""

    model: str = Field(description="The winner, as its results name it.")
    index: int = Field(description="The winner's position in `models`.")
    cancelled: list[str] = Field(description="The other entries of `models`, as asked: cancelled.")


class PipelineStageResult(ProcessResponse):
    prompt: str = Field(description="The stage's prompt as it ran: its template with the texts substituted.")


class PipelineTimings(BaseModel):
    total_ms: float
    stages_ms: list[float] = Field(description="Each stage's time, in order (its own timings break it down).")


class PipelineResponse(BaseModel):
    stages: list[PipelineStageResult] = Field(
        description='Every stage that ran, in order. All of them, unless one was cancelled (finish_reason "cancelled"): '
        "the pipeline ends with that stage."
    )
    output: str = Field(description="The text the last stage that ran generated.")
    timings: PipelineTimings


def parallel_sse_schema() -> dict:
    """One server-sent event of a parallel stream."""
    return sse_schema(
        [
            ("start", ParallelStreamStart.model_json_schema(), "The first event: the winner, and the models cancelled."),
            ("token", StreamToken.model_json_schema(), "One per token the winner generates, in order."),
            ("done", {"$ref": "#/components/schemas/ProcessResponse"}, "The last event: the winner's whole response."),
            (
                "error",
                {"$ref": "#/components/schemas/ErrorResponse"},
                "The last event, instead of `done`, when the winner fails after the 200 status line.",
            ),
        ]
    )
