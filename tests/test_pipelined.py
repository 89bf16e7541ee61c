"""Proactive drafting with rounds in flight (nodes/models/pipelined.py) is lossless.

Greedy: the output equals target-only on the bundled pair for several prompts and 1-3 rounds in
flight, also when the link drops or duplicates verdicts. Sampling: on a 4-token vocabulary the joint
distribution of the first three tokens (the third comes from a round built on a prediction) passes a
chi-square test against the target's exact one, and a wrong keep rule (trusting the draft's
prediction instead of the target's next token) fails the same test.
"""

import pytest
import torch

from nodes.models.errors import ModelError
from nodes.models.pipelined import DelayLink, Faults, pipelined_generate
from nodes.models.sampling import target_probs
from nodes.models.sessions import TargetSession
from nodes.protocol.pipelining import AheadDraft, KeepRule
from schemas.rounds import SamplingParams
from tests.sample_pool import count_cells
from tests.test_speculative_sampling import chi2, chi2_critical  # one chi-square for every sampling test

TEXTS = ["Once upon a time", "The cat sat on", "def add(a, b):"]


def target_only(pair, prompt, n):
    s = TargetSession(pair.target, prompt, pair.vocab_size)
    return [s.step().next_token for _ in range(n)]


def encode(pair, text):
    return list(pair.tokenizer.encode(text))


@pytest.mark.parametrize("rounds,length", [(1, 4), (2, 3), (3, 2)])
def test_greedy_output_equals_target_only(pair, rounds, length):
    for text in TEXTS:
        prompt = encode(pair, text)
        got = pipelined_generate(pair, prompt, 24, length, rounds, one_way_ms=2.0)
        assert got.token_ids == target_only(pair, prompt, 24), text


def test_the_plain_chain_over_the_same_link_equals_target_only(pair):
    prompt = encode(pair, TEXTS[0])
    got = pipelined_generate(pair, prompt, 24, 4, 1, one_way_ms=2.0, draft_ahead=False)
    assert got.token_ids == target_only(pair, prompt, 24) and got.cancelled == 0


def test_rounds_built_on_predictions_are_voided_by_misses_and_the_output_still_matches(pair):
    prompt = encode(pair, TEXTS[1])
    got = pipelined_generate(pair, prompt, 32, 2, 3, one_way_ms=2.0)
    assert got.cancelled > 0 and got.token_ids == target_only(pair, prompt, 32)


def test_dropped_and_duplicated_verdicts_change_nothing_but_the_time(pair):
    prompt = encode(pair, TEXTS[0])
    faults = Faults(drop_verdicts=frozenset({1, 4}), duplicate_verdicts=frozenset({0, 2, 3}))
    got = pipelined_generate(pair, prompt, 24, 3, 3, one_way_ms=2.0, faults=faults, resend_after_s=0.2)
    assert got.resends >= 2  # each lost verdict was asked for again
    assert got.token_ids == target_only(pair, prompt, 24)


def test_the_link_holds_each_message_for_the_delay_in_order():
    link = DelayLink(30.0)
    link.send("a")
    link.send("b")
    assert link.recv(0) is None  # not yet delivered
    assert [link.recv(1.0), link.recv(1.0)] == ["a", "b"]


def test_more_rounds_in_flight_without_drafting_ahead_is_refused(pair):
    with pytest.raises(ModelError, match="draft_ahead"):
        pipelined_generate(pair, [1, 2], 4, 2, 2, 0.0, draft_ahead=False)


# --- sampling ---------------------------------------------------------------------------------------

PROMPT = [1, 3, 0, 2, 2]
PARAMS = SamplingParams(temperature=1.0, top_k=3)
SAMPLES = 3000
# a negative control draws a third as many: a wrong rule's chi-square grows with the samples, and at 1,000
# these controls already sit 9-65x above the critical value, so failing on fewer shows the test's power
CONTROL_SAMPLES = 1000


def exact_joint3(model) -> torch.Tensor:
    """P(t1, t2, t3) of the target, over 4**3 cells."""
    def probs(ctx):
        return target_probs(model(input_ids=torch.tensor([ctx])).logits[0, -1], PARAMS)

    out = torch.zeros(64)
    with torch.inference_mode():
        p1 = probs(PROMPT)
        for a in range(4):
            p2 = probs(PROMPT + [a])
            for b in range(4):
                p3 = probs(PROMPT + [a, b])
                out[16 * a + 4 * b: 16 * a + 4 * b + 4] = p1[a] * p2[b] * p3
    return out


def empirical_joint3(tiny_pair, rule: KeepRule, tree=None, samples: int = SAMPLES) -> torch.Tensor:
    def cell(seed: int) -> int:
        r = pipelined_generate(tiny_pair, PROMPT, 3, 1, 2, 0.0, PARAMS, seed=seed, rule=rule, tree=tree)
        a, b, c = r.token_ids[:3]
        return (16 * a + 4 * b + c,)

    return torch.tensor(count_cells(cell, samples)[0], dtype=torch.float32)


class TrustThePrediction(KeepRule):
    """Wrong on purpose: a fully accepted round keeps the draft's own next token, unchecked."""

    def keeps(self, ahead: AheadDraft, round_id: int, accepted: int, next_token: int) -> bool:
        return accepted == ahead.drafted

    def committed_next(self, ahead: AheadDraft, next_token: int) -> int:
        return ahead.predicted_next


@pytest.mark.slow
def test_sampled_tokens_follow_the_target_distribution(tiny_pair):
    stat, df = chi2(empirical_joint3(tiny_pair, KeepRule()), exact_joint3(tiny_pair.target))
    assert stat < chi2_critical(df), f"chi2={stat:.1f} df={df}"


@pytest.mark.slow
def test_trusting_the_prediction_fails_the_same_test(tiny_pair):
    stat, df = chi2(empirical_joint3(tiny_pair, TrustThePrediction(), samples=CONTROL_SAMPLES),
                    exact_joint3(tiny_pair.target))
    assert stat > chi2_critical(df), f"negative control passed: chi2={stat:.1f} df={df}"


def test_the_sample_depends_on_the_seed_not_on_the_rounds_in_flight_or_timing(tiny_pair):
    runs = [pipelined_generate(tiny_pair, PROMPT, 24, 2, r, d, PARAMS, seed=7).token_ids
            for r, d in ((1, 0.0), (2, 3.0), (3, 0.0))]
    assert runs[0] == runs[1] == runs[2]
    assert pipelined_generate(tiny_pair, PROMPT, 24, 2, 1, 0.0, PARAMS, seed=8).token_ids != runs[0]


# --- tree rounds ------------------------------------------------------------------------------------

from control.trees import spine  # noqa: E402


@pytest.mark.parametrize("rounds,depth,width", [(1, 4, 2), (2, 3, 3), (3, 2, 3)])
def test_tree_rounds_in_flight_give_the_target_only_output(pair, rounds, depth, width):
    for text in TEXTS:
        prompt = encode(pair, text)
        got = pipelined_generate(pair, prompt, 24, 0, rounds, one_way_ms=2.0, tree=spine(depth, width))
        assert got.token_ids == target_only(pair, prompt, 24), text


def test_tree_rounds_survive_a_dropped_and_a_duplicated_verdict(pair):
    prompt = encode(pair, TEXTS[2])
    faults = Faults(drop_verdicts=frozenset({2}), duplicate_verdicts=frozenset({1}))
    got = pipelined_generate(pair, prompt, 24, 0, 3, one_way_ms=2.0, faults=faults, resend_after_s=0.2,
                             tree=spine(3, 2))
    assert got.resends >= 1 and got.token_ids == target_only(pair, prompt, 24)


def test_sampled_tree_rounds_do_not_depend_on_the_rounds_in_flight(tiny_pair):
    runs = [pipelined_generate(tiny_pair, PROMPT, 24, 0, r, 0.0, PARAMS, seed=3, tree=spine(2, 2)).token_ids
            for r in (1, 3)]
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_sampled_tree_rounds_in_flight_follow_the_target_distribution(tiny_pair):
    stat, df = chi2(empirical_joint3(tiny_pair, KeepRule(), spine(1, 2)), exact_joint3(tiny_pair.target))
    assert stat < chi2_critical(df), f"chi2={stat:.1f} df={df}"


def test_the_spine_of_a_spine_tree_is_its_rank_one_path():
    from nodes.models.pipelined import spine_nodes

    assert spine_nodes(spine(3, 2)) == [0, 2, 4]
    assert spine_nodes(spine(2, 1)) == [0, 1]


def test_a_tree_whose_side_branches_have_children_is_refused(pair):
    from control.trees import Tree

    with pytest.raises(ModelError, match="spine shape"):
        pipelined_generate(pair, [1, 2], 4, 0, 2, 0.0, tree=Tree((-1, -1, 1)))  # node 2 under rank-2 node 1
