"""What a generation request is and what comes back, with no torch and no transport.

The coordinator's engine produces these; the gRPC shells turn them into
protobuf and back; the gateway consumes them. Kept free of torch so the
gateway can speak them without loading a tensor library.
"""

from __future__ import annotations

from dataclasses import dataclass

GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingSpec:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    suppress: tuple[int, ...] = ()  # token ids that may not be chosen (EOS before min_tokens)
    top_logprobs: int = 0  # also report this many most likely tokens at each position (0: none)

    @property
    def greedy(self) -> bool:
        # Below this, temperature sampling is argmax in all but name, and dividing
        # the logits by it overflows float32 to inf (then NaN probabilities): a
        # temperature of 1e-300 passed validation and failed the node (vLLM: _SAMPLING_EPS).
        return self.temperature < GREEDY_BELOW_TEMPERATURE


class GenerationError(Exception):
    """A request that cannot be served. `kind`: invalid | not_found | conflict | overloaded | unavailable | internal."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    min_tokens: int = 0
    sampling: SamplingSpec = SamplingSpec()
    ignore_eos: bool = False
    tenant: str = ""  # who it is for (an API key's fingerprint): the engine's fair share; "" none
    model: str = ""  # the served model's name it runs on; "" the default model


@dataclass(frozen=True)
class PartitionTiming:
    partition: int
    node_id: str
    ms: float


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    logprob: float
    index: int
    partitions: list[PartitionTiming]
    # (token id, log-probability), most likely first: when the request asked for top_logprobs.
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class FinishEvent:
    finish_reason: str  # "length" | "eos" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    inference_ms: float
    partitions: list[PartitionTiming]


Event = TokenEvent | FinishEvent
