"""The REST contract of /api/model/*."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ProcessRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, description="The prompt.")
    metadata: dict[str, Any] | None = Field(None, description="Echoed back untouched.")
    max_tokens: int = Field(64, ge=1, description="Tokens to generate at most (also bounded by the context).")
    min_tokens: int = Field(0, ge=0, description="EOS is not accepted before this many tokens.")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 is greedy.")
    top_k: int = Field(0, ge=0, description="0 turns top-k off.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="1 turns nucleus sampling off.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Makes sampling repeatable.")
    stop: list[str] | str | None = Field(
        None, validate_default=True, description="Generation ends before any of these strings (at most 16)."
    )
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-text token.")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: list[str] | str | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        if len(stops) > 16:
            raise ValueError("at most 16 stop strings")
        return stops

    @property
    def deterministic(self) -> bool:
        return self.temperature == 0.0 or self.seed is not None


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
    finish_reason: str  # "length" | "eos" | "stop"
    usage: Usage
    cached: bool
    timings: Timings
    request_id: str
    model: str
    metadata: dict[str, Any] | None = None
