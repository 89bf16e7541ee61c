"""`auto` stops per token where the drafter has an acceptance head (RoundContext.stops), and drafts
fixed lengths where it has none. Pure numpy: a round's per-token acceptance probabilities are
drawn, the head reports them exactly, and the target accepts each token with that probability."""
from __future__ import annotations

import copy

import msgpack
import numpy as np
import pytest

from control import RoundContext, RoundOutcome, make_policy

K = 8


def compute_ms(length):
    return 100.0 + 50.0 * length


def draw_rounds(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(p, accepted), each [n, K]: most tokens easy (p ~ 0.95), a fifth hard (p ~ 0.33)."""
    rng = np.random.default_rng(seed)
    easy = rng.random((n, K)) < 0.8
    p = np.where(easy, rng.beta(18, 1, (n, K)), rng.beta(1.5, 3, (n, K)))
    return p, rng.random((n, K)) < p


def fixed_ms_per_token(accepted: np.ndarray, length: int, delay_ms: float) -> float:
    kept = np.cumprod(accepted, 1)[:, :length].sum()
    return (compute_ms(length) + 2 * delay_ms) * len(accepted) / (kept + len(accepted))


def stop_after(policy, ctx: RoundContext, length: int, probs) -> int:
    """How many tokens a round drafts: the policy's length, cut where its rule says stop (on the
    round's own copy, as the drafter calls it)."""
    rule = copy.copy(policy)
    return next((k for k in range(1, length) if rule.should_stop(ctx, k, probs[k - 1])), length)


def play(policy, p: np.ndarray, accepted: np.ndarray, delay_ms: float, stops: bool = True) -> float:
    """ms/token (ratio of sums) of `policy` over these rounds."""
    kept = np.cumprod(accepted, 1)
    total_ms = tokens = 0.0
    for i in range(len(p)):
        ctx = RoundContext(delay_ms, None, stops)
        n = stop_after(policy, ctx, policy.choose(ctx), p[i])
        a = int(kept[i, :n].sum())
        policy.observe(RoundOutcome(n, a, compute_ms(n) + 2 * delay_ms, RoundContext(delay_ms)))
        total_ms, tokens = total_ms + compute_ms(n) + 2 * delay_ms, tokens + a + 1
    return total_ms / tokens


def best_threshold_rule(p: np.ndarray, accepted: np.ndarray, delay_ms: float) -> float:
    """The best ms/token of any rule 'stop once P(1..n) * p_n < bar', bar chosen in hindsight."""
    kept = np.cumprod(accepted, 1)
    signal = np.cumprod(p, 1) * p
    best = np.inf
    for bar in np.linspace(0.0, 1.0, 51):
        below = signal < bar
        below[:, -1] = True
        n = below.argmax(1) + 1
        a = kept[np.arange(len(n))[:, None], np.arange(K)[None, :]] * (np.arange(K)[None, :] < n[:, None])
        best = min(best, float((compute_ms(n) + 2 * delay_ms).sum() / (a.sum() + len(n))))
    return best


@pytest.mark.parametrize("delay_ms", [20.0, 150.0])
def test_auto_with_the_signal_beats_every_fixed_length_and_nears_the_best_threshold_in_hindsight(delay_ms):
    p, accepted = draw_rounds(600, seed=0)
    auto = play(make_policy("auto", max_length=K, seed=0), p, accepted, delay_ms)
    best_fixed = min(fixed_ms_per_token(accepted, L, delay_ms) for L in range(1, K + 1))
    assert auto < 0.95 * best_fixed                                    # ~10 % below, measured
    assert auto < 1.02 * best_threshold_rule(p, accepted, delay_ms)    # ~0.5 % above, measured


def test_auto_drafts_the_cap_only_where_the_round_can_stop():
    p = make_policy("auto", max_length=K, seed=0)
    for L, a in ((1, 0), (5, 0), (1, 0), (2, 0)):  # nothing past the first token is ever accepted
        p.observe(RoundOutcome(L, a, compute_ms(L), RoundContext(0.0)))
    assert p.choose(RoundContext(0.0, stops=True)) == K  # the rule cuts it: at 0.3 it stops at once
    assert stop_after(p, RoundContext(0.0, stops=True), K, [0.3] * K) == 1
    assert p.choose(RoundContext(0.0)) <= 2               # without the signal: a short fixed length


def test_a_longer_delay_lowers_the_stop_bar_and_the_rule_stops_exactly_below_it():
    p = make_policy("auto", max_length=K, seed=0)
    pa, acc = draw_rounds(60, seed=1)
    play(p, pa, acc, 50.0)
    bars = [p.stop_bar(d) for d in (0.0, 20.0, 150.0, 1000.0)]
    assert all(0 < b1 < b0 < 1 for b0, b1 in zip(bars, bars[1:])), bars
    ctx = RoundContext(150.0, stops=True)
    bar = p.stop_bar(150.0)
    probs = [0.99, 0.97, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    product = np.cumprod(probs) * probs
    assert stop_after(p, ctx, K, probs) == next(n for n in range(1, K) if product[n - 1] < bar)


def look_ahead_stop(policy, bar: float, probs) -> int:
    """Where the rule should stop, computed here from its learned hazard: after token n once no k more
    tokens, each predicted at its position's hazard shifted in logits by token n's deviation from its
    own, earn lambda * P(1..n+j accepted) above their cost a (sums over j <= k, in units of lambda)."""
    logit = lambda q: np.log(np.clip(q, 1e-3, 1 - 1e-3) / (1 - np.clip(q, 1e-3, 1 - 1e-3)))
    hazard = logit(policy.hazard_sample(None))
    alive = 1.0
    for n in range(1, K):
        alive *= probs[n - 1]
        future = 1 / (1 + np.exp(-(hazard[n:] + logit(probs[n - 1]) - hazard[n - 1])))
        gains = np.cumsum(alive * np.cumprod(future) - bar)
        if not gains.max() > 0:
            return n
    return K


@pytest.fixture
def look_ahead(monkeypatch):
    """auto's look-ahead stop rule (off by default: measured slower live on the bundled pair)."""
    import control.policies.auto as auto_module
    monkeypatch.setattr(auto_module, "STOP_LOOKAHEAD", True)


def test_the_look_ahead_rule_stops_where_no_more_tokens_pay(look_ahead):
    p = make_policy("auto", max_length=K, seed=0)
    pa, acc = draw_rounds(60, seed=1)
    play(p, pa, acc, 50.0)
    bars = [p.stop_bar(d) for d in (0.0, 20.0, 150.0, 1000.0)]
    assert all(0 < b1 < b0 < 1 for b0, b1 in zip(bars, bars[1:])), bars
    rng = np.random.default_rng(5)
    stops = []
    for d in (0.0, 20.0, 150.0):
        ctx = RoundContext(d, stops=True)
        for _ in range(30):
            probs = rng.uniform(0.2, 1.0, K) if rng.random() < 0.5 else rng.uniform(0.9, 1.0, K)
            stops.append(stop_after(p, ctx, K, probs))
            assert stops[-1] == look_ahead_stop(p, p.stop_bar(d), probs)
    assert 1 in stops and K in stops  # the draws span the rule: rounds cut at once and rounds drafted out


def test_under_the_look_ahead_rule_a_hard_first_token_does_not_stop_a_draft_whose_later_positions_are_easy(
        look_ahead):
    p = make_policy("auto", max_length=K, seed=0)
    rng = np.random.default_rng(6)
    for _ in range(200):  # heavy-head acceptance: the first token 0.4, every later one 0.95
        ok = rng.random(K) < np.r_[0.4, np.full(K - 1, 0.95)]
        a = K if ok.all() else int(np.argmin(ok))
        ctx = RoundContext(150.0, stops=True)
        n = stop_after(p, ctx, p.choose(ctx), np.r_[0.4, np.full(K - 1, 0.95)])
        p.observe(RoundOutcome(n, min(a, n), compute_ms(n) + 300.0, RoundContext(150.0)))
    ctx = RoundContext(150.0, stops=True)
    probs = [0.25] + [0.95] * (K - 1)  # this round's first token is harder than its position's usual
    assert 0.25 * 0.25 < p.stop_bar(150.0)  # the one-step rule (next token as hard as this one) stops ...
    assert stop_after(p, ctx, K, probs) > 1  # ... but the later positions are easy, and the rule drafts on


@pytest.mark.parametrize("rule", ["one-step", "look-ahead"])
def test_a_token_as_hard_as_the_hardest_position_stops_the_draft(rule, monkeypatch):
    import control.policies.auto as auto_module
    monkeypatch.setattr(auto_module, "STOP_LOOKAHEAD", rule == "look-ahead")
    p = make_policy("auto", max_length=K, seed=0)
    pa, acc = draw_rounds(60, seed=1)
    play(p, pa, acc, 0.0)
    assert stop_after(p, RoundContext(0.0, stops=True), K, [0.02] * K) == 1


def test_the_stop_rule_waits_for_two_rounds():
    p = make_policy("auto", max_length=K, seed=0)
    ctx = RoundContext(0.0, stops=True)
    assert p.choose(ctx) == 1 and not p.should_stop(ctx, 1, 0.0)
    p.observe(RoundOutcome(1, 1, compute_ms(1), RoundContext(0.0)))
    assert p.choose(ctx) == K // 2 + 1 and not p.should_stop(ctx, 1, 0.0)  # the middle length, uncut


def test_a_restored_auto_stops_exactly_as_the_original():
    original = make_policy("auto", max_length=K, seed=3)
    pa, acc = draw_rounds(80, seed=2)
    play(original, pa, acc, 20.0)
    clone = make_policy("auto", max_length=K, seed=9)
    clone.restore(msgpack.unpackb(msgpack.packb(original.snapshot())))
    rng = np.random.default_rng(4)
    for d in (0.0, 20.0, 150.0):
        ctx = RoundContext(d, stops=True)
        assert clone.choose(ctx) == original.choose(ctx) == K
        for _ in range(20):
            probs = rng.uniform(0.3, 1.0, K)
            assert stop_after(clone, ctx, K, probs) == stop_after(original, ctx, K, probs)


def test_a_snapshot_from_before_the_stop_rule_loads_and_the_rule_waits_for_rounds_of_its_own():
    old = make_policy("auto", max_length=K, seed=3)
    pa, acc = draw_rounds(20, seed=2)
    play(old, pa, acc, 20.0, stops=False)
    snap = old.snapshot()
    del snap["state"]["recent"]
    clone = make_policy("auto", max_length=K, seed=3)
    clone.restore(snap)
    ctx = RoundContext(20.0, stops=True)
    assert clone.choose(ctx) < K and not clone.should_stop(ctx, 1, 0.0)
    clone.observe(RoundOutcome(3, 1, compute_ms(3) + 40.0, RoundContext(20.0)))
    assert clone.choose(ctx) == K


def test_a_snapshot_with_fewer_tokens_than_rounds_is_refused():
    from control import ControlError
    p = make_policy("auto", max_length=K)
    snap = p.snapshot()
    snap["state"]["recent"] = [10.0, 1000.0, 5.0]
    with pytest.raises(ControlError, match="recent"):
        make_policy("auto", max_length=K).restore(snap)
