"""Accept / residual / bonus rules of speculative sampling on hand-built distributions."""
import torch

from nodes.models.sampling import accept_greedy, accept_sampled, target_probs
from schemas.rounds import SamplingParams


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_greedy_accepts_the_matching_prefix_and_returns_the_targets_token():
    assert accept_greedy([5, 6, 7, 8], [5, 6, 9]) == (2, 7)


def test_greedy_all_accepted_returns_the_bonus_token():
    assert accept_greedy([5, 6, 7, 8], [5, 6, 7]) == (3, 8)


def test_token_the_target_rates_above_the_draft_is_always_accepted():
    p = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.3, 0.5]])
    for s in range(50):
        a, nxt = accept_sampled(p, [1], [[0, 1]], [[0.5, 0.5]], gen(s))
        assert a == 1  # p(x)=0.9 >= q(x)=0.5
        assert nxt in (0, 1, 2)


def test_token_the_target_never_produces_is_always_rejected_and_resampled_from_the_residual():
    p = torch.tensor([[0.0, 0.25, 0.75], [1 / 3, 1 / 3, 1 / 3]])
    counts = torch.zeros(3)
    for s in range(2000):
        a, nxt = accept_sampled(p, [0], [[0, 1]], [[0.5, 0.5]], gen(s))
        assert a == 0
        counts[nxt] += 1
    # residual max(p - q, 0) = [0, 0, 0.75] -> always token 2
    assert counts.tolist() == [0, 0, 2000]


def test_acceptance_probability_is_p_over_q():
    p = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    accepted = sum(accept_sampled(p, [0], [[0, 1]], [[0.8, 0.2]], gen(s))[0] for s in range(4000))
    assert abs(accepted / 4000 - 0.25) < 0.03  # min(1, 0.2/0.8)


def test_bonus_is_sampled_from_the_last_target_row_when_all_are_accepted():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert accept_sampled(p, [0], [[0]], [[1.0]], gen()) == (1, 1)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = target_probs(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), SamplingParams(1.0, top_p=0.7))
    assert torch.allclose(probs, torch.tensor([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]))
