"""Next-token choice on the last partition: greedy, temperature, top-k, top-p.

A seeded request draws step n from a generator seeded by (seed, position), not
from a stream carried across steps, so a replay on another replica after a
failure draws exactly the same tokens.
"""

from __future__ import annotations

import torch

from .generation_types import SamplingSpec  # noqa: F401  (re-exported)


def step_seed(seed: int, position: int) -> int:
    # splitmix64-style mixing: nearby (seed, position) pairs give unrelated streams.
    z = (seed * 0x9E3779B97F4A7C15 + position + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def filter_logits(logits: torch.Tensor, spec: SamplingSpec) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on one row of logits."""
    scores = logits / spec.temperature
    if 0 < spec.top_k < scores.shape[-1]:
        kth = torch.topk(scores, spec.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if spec.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p; the first always stays.
        drop_sorted = (cumulative - sorted_scores.softmax(-1)) >= spec.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


@torch.inference_mode()
def sample(logits: torch.Tensor, specs: list[SamplingSpec], positions: list[int]) -> tuple[list[int], list[float]]:
    """One token per row of `logits` [B, vocab]; `positions` are the new tokens' positions.

    Returns the tokens and their log-probabilities under the model's own
    (unfiltered) distribution.
    """
    logits = logits.float()
    for row, spec in enumerate(specs):
        if spec.suppress:
            logits[row, list(spec.suppress)] = float("-inf")
    logprobs = torch.log_softmax(logits, dim=-1)
    tokens = torch.argmax(logits, dim=-1).tolist()
    for row, (spec, position) in enumerate(zip(specs, positions, strict=True)):
        if spec.greedy:
            continue
        generator = torch.Generator(device="cpu")
        if spec.seed is None:
            generator.seed()
        else:
            generator.manual_seed(step_seed(spec.seed, position))
        probs = filter_logits(logits[row], spec).softmax(-1).cpu()
        tokens[row] = int(torch.multinomial(probs, 1, generator=generator))
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logits.device).unsqueeze(1)).squeeze(1)
    return tokens, chosen.tolist()
