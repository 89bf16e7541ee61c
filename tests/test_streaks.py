"""Learning a hidden easy/hard acceptance regime from rounds alone (control.streaks), and `auto` using it."""
import msgpack
import numpy as np
import pytest

from control import streaks
from control.families import all_families
from control.policies.auto import AutoPolicy
from control.policies.registry import make_policy
from control.regimes import HiddenRegimes
from control.types import ControlError, RoundContext, RoundOutcome

K = 8


def regimes(easy: float, hard: float, stay_easy: float, stay_hard: float) -> HiddenRegimes:
    return HiddenRegimes(np.cumprod(np.array([[easy], [hard]]) * np.ones((2, K)), axis=1),
                         np.array([[stay_easy, 1 - stay_easy], [1 - stay_hard, stay_hard]]))


def rounds(reg: HiddenRegimes, n: int, seed: int, lengths=(1, K)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lengths, accepted, regime in force) of n rounds at lengths drawn uniformly from `lengths`."""
    rng = np.random.default_rng(seed)
    ls, acc, regime, s = [], [], [], 0
    for _ in range(n):
        L = int(rng.integers(lengths[0], lengths[1] + 1))
        acc.append(int(rng.choice(L + 1, p=reg.outcome_probs(L)[s])))
        ls.append(L)
        regime.append(s)
        s = s if rng.random() < reg.transitions[s, s] else 1 - s
    return np.array(ls), np.array(acc), np.array(regime)


@pytest.mark.parametrize("fitter", [streaks.fit, streaks.fit_tied])  # two free curves, or one shared shape
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_each_regimes_acceptance_and_persistence(seed, fitter):
    reg = regimes(0.92, 0.30, 0.90, 0.85)
    lengths, accepted, _ = rounds(reg, 1500, seed)
    fit = fitter(lengths, accepted, K)
    # the positions each regime reaches often (the hard one rarely passes its first) within a few points
    assert np.abs(fit.hazard[0, :4] - 0.92).max() < 0.05, fit.hazard
    assert abs(fit.hazard[1, 0] - 0.30) < 0.05, fit.hazard
    assert np.abs(fit.stay - [0.90, 0.85]).max() < 0.05, fit.stay


def test_the_belief_follows_the_hidden_regime():
    reg = regimes(0.92, 0.30, 0.95, 0.95)
    lengths, accepted, regime = rounds(reg, 800, 4)
    learner = streaks.RegimeLearner(K)
    right = []
    for L, a, s in zip(lengths, accepted, regime):
        if learner.active:
            right.append((learner.belief > 0.5) == (s == 0))  # the belief before the round is seen
        learner.observe(L, a)
    assert len(right) > 600  # evident within the first 200 rounds
    assert np.mean(right) > 0.85


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_rounds_without_regimes_keep_the_pooled_rule(seed, tied, monkeypatch):
    # every family shape, acceptance independent across rounds: two regimes are never evident, by either test
    monkeypatch.setattr(streaks, "TIED", tied)
    rng = np.random.default_rng(seed)
    for p in all_families(members=1, seed=seed):
        learner = streaks.RegimeLearner(K)
        ever = False
        for L in rng.integers(1, 5, size=600):
            learner.observe(int(L), int((p.survival[:L] >= rng.random()).sum()))
            ever |= learner.active
        assert not ever, p.name


def test_regimes_that_start_after_a_stretch_without_them_are_found(monkeypatch):
    # 120 hard rounds fit two near-equal regimes; EM warm-started from that fit stays there for good, so
    # each refit also starts afresh and keeps the likelier fit (the two free curves' test, where it was found)
    monkeypatch.setattr(streaks, "TIED", False)
    reg, hard = regimes(0.92, 0.25, 0.90, 0.97), regimes(0.25, 0.25, 0.5, 0.5)
    l0, a0, _ = rounds(hard, 120, 28, lengths=(1, 2))
    l1, a1, _ = rounds(reg, 400, 128, lengths=(1, 3))

    def ever_active() -> bool:
        learner = streaks.RegimeLearner(K)
        for L, a in zip(np.r_[l0, l1], np.r_[a0, a1]):
            learner.observe(int(L), int(a))
        return learner.active

    assert ever_active()
    monkeypatch.setattr(streaks, "RESTART", False)
    assert not ever_active()  # what the restart is for


def test_a_learner_whose_window_is_full_keeps_refitting():
    # a long-lived edge: streaks that begin after the window filled are still learned
    rng = np.random.default_rng(0)
    learner = streaks.RegimeLearner(K, window=200)
    for _ in range(250):
        L = int(rng.integers(1, K + 1))
        learner.observe(L, int((0.7 ** np.arange(1, L + 1) >= rng.random()).sum()))
    assert not learner.active and learner.seen == 250 and len(learner.lengths) == 200
    lengths, accepted, _ = rounds(regimes(0.95, 0.20, 0.95, 0.95), 400, 7)
    for L, a in zip(lengths, accepted):
        learner.observe(int(L), int(a))
    assert learner.active
    assert learner.next_fit - learner.seen <= 200 // 4 + 5


def test_a_snapshot_keeps_the_round_count_past_the_window():
    learner = streaks.RegimeLearner(K, window=50)
    lengths, accepted, _ = rounds(regimes(0.95, 0.20, 0.95, 0.95), 80, 1)
    for L, a in zip(lengths, accepted):
        learner.observe(int(L), int(a))
    clone = streaks.RegimeLearner(K, window=50)
    clone.load(msgpack.unpackb(msgpack.packb(learner.state())))
    assert (clone.seen, clone.next_fit, len(clone.lengths)) == (80, learner.next_fit, 50)
    old = {k: v for k, v in learner.state().items() if k != "seen"}  # a snapshot from before the count
    clone.load(old)
    assert clone.seen == 50


def test_fit_refuses_an_outcome_longer_than_its_round():
    with pytest.raises(ValueError, match="accepted <= length"):
        streaks.fit([3, 2], [1, 3], K)


def test_auto_plays_longer_in_an_easy_stretch_than_in_a_hard_one():
    reg = regimes(0.95, 0.20, 0.95, 0.95)
    compute = 40.0 + 6.0 * np.arange(1, K + 1)
    policy = AutoPolicy(K, seed=0)
    rng = np.random.default_rng(3)
    s, by_regime = 0, {0: [], 1: []}
    for r in range(600):
        ctx = RoundContext(20.0)
        L = policy.choose(ctx)
        if r >= 300:
            by_regime[s].append(L)
        a = int(rng.choice(L + 1, p=reg.outcome_probs(L)[s]))
        policy.observe(RoundOutcome(L, a, compute[L - 1] + 40.0, ctx, measured_compute_ms=compute[L - 1]))
        s = s if rng.random() < reg.transitions[s, s] else 1 - s
    assert policy.regimes.active
    assert np.mean(by_regime[0]) > np.mean(by_regime[1]) + 3, {k: np.mean(v) for k, v in by_regime.items()}


def test_a_restored_auto_keeps_its_learned_regimes():
    reg = regimes(0.95, 0.20, 0.95, 0.95)
    lengths, accepted, _ = rounds(reg, 300, 6)
    original = AutoPolicy(K, seed=1)
    for L, a in zip(lengths, accepted):
        ctx = RoundContext(20.0)
        original.observe(RoundOutcome(int(L), int(a), 60.0 + 6 * L, ctx, measured_compute_ms=20.0 + 6 * L))
    assert original.regimes.active
    clone = make_policy("auto", max_length=K, seed=9)
    clone.restore(msgpack.unpackb(msgpack.packb(original.snapshot())))
    for a in (0, K, 2, K):
        ctx = RoundContext(20.0)
        assert clone.choose(ctx) == original.choose(ctx)
        for p in (clone, original):
            p.observe(RoundOutcome(K, a, 128.0, ctx, measured_compute_ms=88.0))


def test_a_snapshot_with_an_impossible_round_is_refused():
    p = AutoPolicy(K)
    snap = p.snapshot()
    snap["state"]["regimes"]["rounds"] = [2 * (K + 1) + 5]  # 5 accepted in a round of 2
    with pytest.raises(ControlError, match="regimes.rounds"):
        make_policy("auto", max_length=K).restore(snap)


@pytest.mark.parametrize("field,value", [("seen", "many"), ("next_fit", None), ("belief", [1])])
def test_a_snapshot_whose_counts_are_not_numbers_is_refused_naming_them(field, value):
    p = AutoPolicy(K)
    snap = p.snapshot()
    snap["state"]["regimes"][field] = value
    with pytest.raises(ControlError, match="regimes.belief, regimes.next_fit and regimes.seen must be numbers"):
        make_policy("auto", max_length=K).restore(snap)



def test_the_tied_fit_keeps_a_shape_shared_by_both_regimes():
    # a heavy head: the first position far below the rest in both regimes, by the same logit distance
    logit = np.array([-1.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5])
    hazard = 1 / (1 + np.exp(-(logit[None, :] + np.array([[1.0], [-1.0]]))))
    reg = HiddenRegimes(np.cumprod(hazard, axis=1), np.array([[0.9, 0.1], [0.1, 0.9]]))
    lengths, accepted, _ = rounds(reg, 2000, 3)
    fit = streaks.fit_tied(lengths, accepted, K, iterations=300, tol=1e-9)  # the model, not EM's speed
    # where each regime goes often (the hard one seldom passes its first position), and their logit distance
    assert np.abs(fit.hazard[0, :3] - hazard[0, :3]).max() < 0.05 and abs(fit.hazard[1, 0] - hazard[1, 0]) < 0.05
    logit = np.log(fit.hazard / (1 - fit.hazard))
    assert np.allclose(logit[0] - logit[1], logit[0, 0] - logit[1, 0]) and abs(logit[0, 0] - logit[1, 0] - 2.0) < 0.4


def test_the_tied_test_finds_streaks_sooner_than_two_free_curves(monkeypatch):
    reg = regimes(0.90, 0.30, 0.90, 0.90)

    def found(tied: bool, seed: int) -> int:
        monkeypatch.setattr(streaks, "TIED", tied)
        lengths, accepted, _ = rounds(reg, 300, seed, lengths=(1, 3))
        learner = streaks.RegimeLearner(K)
        for n, (L, a) in enumerate(zip(lengths, accepted), 1):
            learner.observe(L, a)
            if learner.active:
                return n
        return 10 ** 6

    tied, free = [found(True, s) for s in range(4)], [found(False, s) for s in range(4)]
    assert np.median(tied) < np.median(free) and max(tied) < 300, (tied, free)
