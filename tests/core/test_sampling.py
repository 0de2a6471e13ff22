from __future__ import annotations

import math

import pytest
import torch

from splitgpt.core.sampling import SamplingSpec, filter_logits, sample, sample_with_alternatives, top_logprobs


def logits(rows=1, vocab=50, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * 3


def test_greedy_is_argmax_with_its_logprob():
    x = logits(3)
    tokens, lps = sample(x, [SamplingSpec()] * 3, [5, 6, 7])
    assert tokens == x.argmax(-1).tolist()
    torch.testing.assert_close(torch.tensor(lps), torch.log_softmax(x, -1).max(-1).values)


def test_seeded_sampling_repeats_per_position_and_varies_across_positions():
    x = logits(vocab=1000)
    spec = SamplingSpec(temperature=1.0, seed=1234)
    first = [sample(x, [spec], [p])[0][0] for p in range(20)]
    again = [sample(x, [spec], [p])[0][0] for p in range(20)]
    assert first == again  # a replay on another replica draws the same tokens
    assert len(set(first)) > 1


def test_top_k_keeps_only_the_k_best():
    x = logits(vocab=100)
    allowed = set(x[0].topk(5).indices.tolist())
    spec = SamplingSpec(temperature=2.0, top_k=5, seed=7)
    drawn = {sample(x, [spec], [p])[0][0] for p in range(200)}
    assert drawn <= allowed and len(drawn) > 1


def test_top_p_keeps_the_smallest_set_reaching_p():
    row = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(filter_logits(row, SamplingSpec(temperature=1.0, top_p=0.7)))
    assert kept.tolist() == [True, True, False, False]
    kept = torch.isfinite(filter_logits(row, SamplingSpec(temperature=1.0, top_p=0.01)))
    assert kept.tolist() == [True, False, False, False]


def test_suppressed_token_is_never_chosen():
    x = torch.zeros(1, 10)
    x[0, 3] = 100.0
    tokens, _ = sample(x, [SamplingSpec(suppress=(3,))], [0])
    assert tokens[0] != 3


def test_top_logprobs_are_the_k_largest_of_the_raw_distribution_per_row():
    x = logits(3, vocab=200)
    specs = [SamplingSpec(top_logprobs=5), SamplingSpec(), SamplingSpec(temperature=0.5, top_k=3, seed=1, top_logprobs=2)]
    tokens, chosen, top = sample_with_alternatives(x, specs, [4, 4, 4])
    reference = torch.log_softmax(x, -1)  # before temperature and top-k: the model's own distribution
    assert top[1] == ()
    for row, k in ((0, 5), (2, 2)):
        values, ids = torch.topk(reference[row], k)
        assert [t for t, _ in top[row]] == ids.tolist()
        torch.testing.assert_close(torch.tensor([lp for _, lp in top[row]]), values)
        assert all(lp <= 0 for _, lp in top[row])
    assert top[0][0] == (tokens[0], chosen[0])  # greedy: the top-1 alternative is the chosen token
    assert (tokens, chosen) == sample(x, specs, [4, 4, 4])  # asking for alternatives changes no choice


def test_top_logprobs_skip_suppressed_tokens_and_cost_nothing_when_not_asked():
    x = logits(2, vocab=30)
    best = int(x[0].argmax())
    _, _, top = sample_with_alternatives(x, [SamplingSpec(suppress=(best,), top_logprobs=30), SamplingSpec()], [0, 0])
    assert best not in [t for t, _ in top[0][:-1]] and top[0][-1][1] == float("-inf")
    assert top_logprobs(torch.log_softmax(x, -1), [0, 0]) == [(), ()]


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-39, 9.9e-6])
def test_a_vanishing_temperature_is_greedy_not_nan(temperature):
    """logits / 1e-300 overflows float32 to inf and softmax to NaN: torch.multinomial then
    raised on the node (found by the hypothesis test over the API). Below 1e-5 it is argmax."""
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    specs = [SamplingSpec(temperature=temperature, seed=7), SamplingSpec(temperature=temperature)]
    tokens, logprobs, _ = sample_with_alternatives(logits.clone(), specs, [3, 3])
    assert tokens == logits.argmax(-1).tolist()
    assert all(math.isfinite(lp) for lp in logprobs)
