"""Speculative sampling through the real sessions keeps the target's distribution exactly.

On a 4-token vocabulary we compute the target's exact joint distribution of the
first two generated tokens and compare it with 3000 seeded speculative samples
by a chi-square test at alpha = 0.001. A deliberately biased acceptance rule
(accept every draft token) must fail the same test.
"""
import math

import pytest
import torch

from control import make_policy
from nodes.models import sessions
from nodes.models.sampling import target_probs
from nodes.speculative import speculative_generate
from schemas.rounds import SamplingParams

PROMPT = [1, 3, 0, 2, 2]
PARAMS = SamplingParams(temperature=1.0, top_k=3)  # draft q truncated to top-3 of 4: exactness must survive it
SAMPLES = 1500
ALPHA_Z = 3.090  # one-sided normal quantile for alpha = 0.001


def chi2_critical(df: int) -> float:
    """Upper alpha quantile of chi-square (Wilson-Hilferty), alpha = 0.001."""
    return df * (1 - 2 / (9 * df) + ALPHA_Z * math.sqrt(2 / (9 * df))) ** 3


def exact_joint(model) -> torch.Tensor:
    with torch.inference_mode():
        p1 = target_probs(model(input_ids=torch.tensor([PROMPT])).logits[0, -1], PARAMS)
        rows = []
        for t in range(4):
            p2 = target_probs(model(input_ids=torch.tensor([PROMPT + [t]])).logits[0, -1], PARAMS)
            rows.append(p1[t] * p2)
    return torch.stack(rows).flatten()


def empirical_joint(tiny_pair) -> torch.Tensor:
    counts = torch.zeros(16)
    for seed in range(SAMPLES):
        res = speculative_generate(tiny_pair, PROMPT, 2, make_policy("fixed:3"), PARAMS, seed=seed)
        a, b = res.token_ids[:2]
        counts[4 * a + b] += 1
    return counts


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    expected = probs * counts.sum()
    keep = expected > 5
    stat = float((((counts - expected) ** 2) / expected.clamp_min(1e-12))[keep].sum())
    rest_obs, rest_exp = float(counts[~keep].sum()), float(expected[~keep].sum())
    if rest_exp > 0:
        stat += (rest_obs - rest_exp) ** 2 / rest_exp
    return stat, int(keep.sum()) - (0 if rest_exp > 0 else 1)


@pytest.fixture(scope="module")
def exact(tiny_pair):
    return exact_joint(tiny_pair.target)


def test_pair_is_a_meaningful_check(tiny_pair, exact):
    draft_joint = exact_joint(tiny_pair.draft)
    assert float((draft_joint - exact).abs().sum()) > 0.3  # the draft alone would be far off


@pytest.mark.slow
def test_speculative_samples_follow_the_target_distribution(tiny_pair, exact):
    stat, df = chi2(empirical_joint(tiny_pair), exact)
    assert stat < chi2_critical(df), f"chi2={stat:.1f} df={df}"


@pytest.mark.slow
def test_biased_acceptance_rule_fails_the_same_test(tiny_pair, exact, monkeypatch):
    def accept_everything(p, draft_tokens, q_ids, q_probs, gen):
        return len(draft_tokens), int(torch.multinomial(p[len(draft_tokens)], 1, generator=gen))

    monkeypatch.setattr(sessions, "accept_sampled", accept_everything)
    stat, df = chi2(empirical_joint(tiny_pair), exact)
    assert stat > chi2_critical(df), f"negative control passed: chi2={stat:.1f} df={df}"


def test_same_seed_gives_the_same_sample(tiny_pair):
    a = speculative_generate(tiny_pair, PROMPT, 20, make_policy("fixed:3"), PARAMS, seed=7)
    b = speculative_generate(tiny_pair, PROMPT, 20, make_policy("fixed:3"), PARAMS, seed=7)
    assert a.token_ids == b.token_ids
