"""Which policy acts in a round and whether its stop rule runs (nodes/protocol/acting), without a broker
or a model: one rule per test."""
from __future__ import annotations

import pytest

from control import ControlError, Policy, RoundContext, make_policy
from nodes.models.errors import ModelError
from nodes.protocol.acting import HeadSlot, StopRule, plan_round, stop_rule
from nodes.protocol.request import EdgeRequest, RoundRules
from schemas.messages import GenerateRequest


class Head:
    """A stand-in acceptance head with a fixed prediction (the real one needs the draft's hidden states)."""

    def accept_prob(self, hidden, logits, token) -> float:
        return 0.25


class Step:
    position, prob, hidden, logits, token = 1, 0.9, None, None, 7


def no_head():
    raise ModelError("no acceptance head at /nowhere")


class Broken(Policy):
    spec = "broken"

    def choose(self, ctx: RoundContext) -> int:
        raise ValueError("cannot choose")


def request(max_new: int = 16) -> EdgeRequest:
    return EdgeRequest(GenerateRequest("r1", prompt="x", max_new_tokens=max_new), [5, 6, 7], RoundRules("edge-a"),
                       "fixed:3")


def test_the_head_is_loaded_once_even_when_there_is_none():
    calls = []

    def load():
        calls.append(1)
        raise ModelError("no acceptance head at /nowhere")

    heads = HeadSlot(load)
    for _ in range(3):
        with pytest.raises(ControlError, match="acceptance head: no acceptance head at /nowhere"):
            heads.get()
    assert calls == [1] and heads.loaded is None


def test_a_confidence_rule_always_runs_and_a_policy_without_a_rule_never_does():
    heads = HeadSlot(no_head)
    assert heads.stops(make_policy("hf-confidence:0.5")) is True
    assert heads.stops(make_policy("fixed:3")) is False


def test_an_acceptance_rule_runs_only_where_the_drafter_has_a_head():
    assert HeadSlot(Head).stops(make_policy("auto")) is True
    assert HeadSlot(no_head).stops(make_policy("auto")) is False


def test_a_policy_that_cannot_do_without_the_head_is_refused_and_an_optional_one_is_not():
    HeadSlot(no_head).check(make_policy("auto"))
    with pytest.raises(ControlError, match="acceptance head"):
        HeadSlot(no_head).check(make_policy("specdec++:0.7"))
    HeadSlot(Head).check(make_policy("specdec++:0.7"))


def test_the_plan_tells_the_policy_whether_its_stop_rule_runs():
    with_head = plan_round(request(), make_policy("auto"), 3, RoundContext(12.0, "s"), HeadSlot(Head))
    without = plan_round(request(), make_policy("auto"), 3, RoundContext(12.0, "s"), HeadSlot(no_head))
    assert with_head.plan.context == RoundContext(12.0, "s", stops=True) and with_head.version == 3
    assert without.plan.context == RoundContext(12.0, "s", stops=False)


def test_a_policy_that_cannot_choose_acts_through_the_fallback_at_version_zero():
    fallback = make_policy("fixed:4")
    acting = plan_round(request(), Broken(8), 7, RoundContext(), HeadSlot(no_head), fallback)
    assert acting.policy is fallback and acting.version == 0 and acting.plan.length == 4
    assert acting.plan.policy_version == 0 and acting.error == "ValueError: cannot choose"


def test_without_a_fallback_a_policy_that_cannot_choose_fails_the_call():
    with pytest.raises(ValueError, match="cannot choose"):
        plan_round(request(), Broken(8), 0, RoundContext(), HeadSlot(no_head))


def test_a_round_whose_rule_does_not_run_drafts_without_a_callback_or_hidden_states():
    assert HeadSlot(no_head).stop_rule(make_policy("auto"), RoundContext(stops=False)) == (None, False)
    assert stop_rule(make_policy("fixed:3"), RoundContext(stops=True)) == (None, False)


def test_the_acceptance_rule_reads_the_heads_prediction_and_asks_for_hidden_states():
    rule, hidden = HeadSlot(Head).stop_rule(make_policy("specdec++:0.7"), RoundContext(stops=True))
    assert isinstance(rule, StopRule) and hidden is True
    rule(Step())
    assert rule.scores == [0.25]


def test_the_confidence_rule_reads_the_drafts_probability_without_hidden_states():
    rule, hidden = stop_rule(make_policy("hf-confidence:0.5"), RoundContext(stops=True))
    assert hidden is False
    rule(Step())
    assert rule.scores == [0.9]


def test_a_required_head_that_is_missing_is_a_one_line_error_not_a_silent_fixed_length():
    with pytest.raises(ModelError, match="needs the acceptance head"):
        stop_rule(make_policy("specdec++:0.7"), RoundContext(stops=False), None)
