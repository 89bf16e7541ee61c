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


def _exact_outcomes(p, draft, q):
    """The exact law of (accepted, next token) under speculative sampling, from the definition."""
    law = torch.zeros(len(draft) + 1, p.shape[-1], dtype=torch.float64)
    reach = 1.0
    for i, x in enumerate(draft):
        alpha = min(1.0, float(p[i, x]) / float(q[i][x])) if q[i][x] > 0 else 0.0
        resid = torch.clamp(p[i].double() - q[i], min=0.0)
        law[i] = reach * (1 - alpha) * resid / resid.sum()
        reach *= alpha
    law[len(draft)] = reach * p[len(draft)].double()
    return law


def test_vectorized_acceptance_follows_the_exact_law_of_the_rule():
    """A two-token draft on a 5-token vocabulary: 6000 seeded verdicts vs the exact law (chi-square, alpha 0.001);
    a rule that skips the residual (resamples from p on rejection) fails the same test."""
    from tests.test_speculative_sampling import chi2, chi2_critical

    g = torch.Generator().manual_seed(11)
    p = torch.softmax(torch.randn(3, 5, generator=g) * 1.5, -1)
    draft, q_ids, q_probs = [1, 3], [[1, 0, 3], [3, 2, 4]], [[0.6, 0.3, 0.1], [0.5, 0.3, 0.2]]
    q = [torch.zeros(5, dtype=torch.float64).index_put_((torch.tensor(i),), torch.tensor(v, dtype=torch.float64))
         for i, v in zip(q_ids, q_probs)]
    law = _exact_outcomes(p, draft, q).flatten()
    counts = torch.zeros_like(law)
    wrong = torch.zeros_like(law)
    for s in range(6000):
        a, t = accept_sampled(p, draft, q_ids, q_probs, gen(s))
        counts[a * 5 + t] += 1
        a2, _ = accept_sampled(p, draft, q_ids, q_probs, gen(s))
        t2 = int(torch.multinomial(p[a2], 1, generator=gen(s + 10**6)))  # negative control: no residual
        wrong[a2 * 5 + t2] += 1
    stat, df = chi2(counts, law.float())
    assert stat < chi2_critical(df), f"chi2={stat:.1f} df={df}"
    stat, df = chi2(wrong, law.float())
    assert stat > chi2_critical(df), f"negative control passed: chi2={stat:.1f} df={df}"


def test_vectorized_and_sequential_rules_agree_on_forced_outcomes():
    """Where the rule leaves no randomness in the verdict, both implementations give the same one."""
    from nodes.models.sampling import accept_sampled_sequential

    p = torch.tensor([[0.0, 0.25, 0.75], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]])
    for s in range(20):
        assert accept_sampled(p, [0, 1], [[0, 1], [1]], [[0.5, 0.5], [1.0]], gen(s)) == (0, 2)
        assert accept_sampled_sequential(p, [0, 1], [[0, 1], [1]], [[0.5, 0.5], [1.0]], gen(s)) == (0, 2)
    p = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert accept_sampled(p, [1], [[1, 2]], [[0.5, 0.5]], gen()) == accept_sampled_sequential(
        p, [1], [[1, 2]], [[0.5, 0.5]], gen()) == (1, 2)
    assert accept_sampled(p[1:], [], [], [], gen()) == (0, 2)
