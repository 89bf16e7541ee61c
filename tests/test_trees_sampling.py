"""Multi-candidate speculative sampling keeps the target's distribution (chi-square, seeded),
and a wrong residual rule is caught by the same test."""
import math

import pytest
import torch

from nodes.models.tree_sampling import accept_candidates, greedy_child, one_hot, residual, walk

SAMPLES = 20000
ALPHA_Z = 3.090  # alpha = 0.001
P = torch.tensor([0.05, 0.40, 0.10, 0.30, 0.15])
Q = torch.tensor([0.35, 0.05, 0.30, 0.10, 0.20])


def chi2_critical(df: int) -> float:
    return df * (1 - 2 / (9 * df) + ALPHA_Z * math.sqrt(2 / (9 * df))) ** 3


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    e = probs * counts.sum()
    keep = e > 0
    return float((((counts - e) ** 2)[keep] / e[keep]).sum())


def emitted_counts(rule, k: int, iid: bool, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(len(P))
    for _ in range(SAMPLES):
        if iid:
            cand = [int(torch.multinomial(Q, 1, generator=gen)) for _ in range(k)]
            qs = [Q] * k
        else:
            cand = [int(t) for t in torch.topk(Q, k).indices]
            qs = [one_hot(x, len(P)) for x in cand]
        _, x = rule(P, cand, qs, gen)
        counts[x] += 1
    return counts


def no_residual_update(p, candidates, qs, gen):
    """Wrong on purpose: every candidate is tested against the untouched p."""
    for i, (x, q) in enumerate(zip(candidates, qs)):
        if float(torch.rand((), generator=gen)) < min(1.0, float(p[x]) / float(q[x])):
            return i, x
    return -1, int(torch.multinomial(residual(p, qs[-1]), 1, generator=gen))


@pytest.mark.parametrize("k,iid", [(1, True), (3, True), (2, False), (3, False)])
def test_the_emitted_token_is_distributed_as_the_target(k, iid):
    assert chi2(emitted_counts(accept_candidates, k, iid), P) < chi2_critical(len(P) - 1)


@pytest.mark.parametrize("iid", [True, False])
def test_a_rule_that_skips_the_residual_update_fails_the_same_test(iid):
    assert chi2(emitted_counts(no_residual_update, 3, iid), P) > chi2_critical(len(P) - 1)


def test_greedy_takes_the_child_holding_the_target_argmax():
    assert greedy_child(7, [3, 7, 9]) == 1
    assert greedy_child(5, [3, 7, 9]) == -1


def test_a_greedy_walk_follows_the_argmax_path_and_ends_with_the_target_token():
    # root 0 -> {1: tok 2, 2: tok 4}; node 1 -> {3: tok 0}; target argmax: root 2, node1 1 (not 0)
    children = [[1, 2], [3], [], []]
    tokens = [9, 2, 4, 0]
    p = torch.zeros(4, 5)
    p[0, 2] = p[1, 1] = p[2, 0] = p[3, 0] = 1.0
    w = walk(children, tokens, p, None, None)
    assert w.path == [1] and w.tokens == [2, 1]


def test_a_candidate_the_draft_could_not_have_drawn_is_refused():
    with pytest.raises(ValueError, match="draft probability 0"):
        accept_candidates(P, [1], [one_hot(0, 5)], torch.Generator().manual_seed(0))
