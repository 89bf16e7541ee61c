"""SpecDec++ baseline: the stop rules (numpy), the shipped acceptance head, drafting that computes
hidden states only when a rule reads them, and lossless generation with the head in the loop."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch

from control import ControlError, RoundContext, make_policy
from control.profile import Profile, load_profile
from nodes.models.errors import ModelError
from nodes.models.head import collect, head_for, load_head
from nodes.models.loading import BUNDLED_PROFILE
from nodes.models.sessions import DraftSession
from nodes.models.train_pair import corpus_documents
from nodes.protocol.acting import HeadSlot
from nodes.speculative import speculative_generate, target_only_generate
from pipeline.transport.client import generate_stream
from schemas.codec import Int32Array
from schemas.messages import GenerateRequest
from tests.pipeline_fixtures import cluster

# C(L) = 10 L (slope a = 10), S = 0.5, 0.25, 0.125 -> B = 1.5, 1.75, 1.875
HAND = Profile("hand", np.array([10.0, 20.0, 30.0]), np.array([0.5, 0.25, 0.125]))


def stops(policy, probs, delay_ms=0.0):
    """The positions (1-based) at which the rule says stop, feeding one round of probabilities."""
    ctx = RoundContext(delay_ms)
    return [pos for pos, p in enumerate(probs, 1) if policy.should_stop(ctx, pos, p)]


# --- (a) the rules, pure numpy --------------------------------------------------------
def test_specdec_stops_exactly_when_the_predicted_rejection_probability_exceeds_h():
    rng = np.random.default_rng(0)
    for h in (0.0, 0.3, 0.7, 1.0):
        p = make_policy(f"specdec++:{h}", max_length=8)
        assert p.choose(RoundContext(55.0)) == 8 and not p.learns and p.stop_signal == "acceptance"
        for _ in range(50):
            probs = rng.uniform(0.5, 1.0, size=8)
            reject = 1.0 - np.cumprod(probs)
            expected = [i + 1 for i in range(8) if reject[i] > h]
            assert stops(p, probs) == expected


def test_specdec_threshold_is_strict_and_resets_every_round():
    p = make_policy("specdec++:0.5", max_length=8)
    assert stops(p, [0.5]) == []            # 1 - 0.5 = 0.5 does not exceed 0.5
    assert stops(p, [0.9, 0.8, 0.7, 0.9]) == [4]  # 0.1, 0.28, 0.496, 0.5464
    assert stops(p, [0.9, 0.8, 0.7]) == []  # a new round starts from a product of 1 again
    assert stops(make_policy("specdec++:0", max_length=8), [1.0, 1.0, 0.999]) == [3]


def test_delay_aware_threshold_is_one_minus_slope_over_best_ms_per_token():
    p = make_policy("specdec++-delay", max_length=3, profile=HAND)
    # d = 5: J = 20/1.5, 30/1.75, 40/1.875 -> lambda* = 13.33..., h = 1 - 10 / (20/1.5) = 0.25
    assert p.threshold(RoundContext(5.0)) == pytest.approx(0.25)
    # d = 50: J = 110/1.5, 120/1.75, 130/1.875 -> lambda* = 120/1.75, h = 1 - 17.5/120
    assert p.threshold(RoundContext(50.0)) == pytest.approx(1 - 17.5 / 120)
    assert stops(p, [0.8, 0.9], delay_ms=5.0) == [2]   # 0.2 <= 0.25 < 0.28
    assert stops(p, [0.8, 0.9], delay_ms=50.0) == []


def test_delay_aware_threshold_grows_with_delay_and_stays_in_zero_one():
    prof = load_profile(BUNDLED_PROFILE)
    p = make_policy("specdec++-delay", max_length=8, profile=prof)
    hs = [p.threshold(RoundContext(d)) for d in (0.0, 5.0, 20.0, 55.0, 111.0, 150.0, 1000.0)]
    assert all(0.0 <= h <= 1.0 for h in hs)
    assert np.all(np.diff(hs) >= 0) and hs[-1] > hs[0]
    steep = Profile("steep", np.array([1.0, 100.0]), np.array([0.1, 0.05]))  # a > lambda*: clipped at 0
    assert make_policy("specdec++-delay", max_length=2, profile=steep).threshold(RoundContext(0.0)) == 0.0


@pytest.mark.parametrize("spec", ["specdec++:0.7", "specdec++-delay"])
def test_specdec_snapshot_restores(spec):
    p = make_policy(spec, max_length=8, profile=HAND)
    clone = make_policy(spec, max_length=8, seed=9, profile=HAND)
    clone.restore(msgpack.unpackb(msgpack.packb(p.snapshot())))
    assert clone.spec == p.spec
    for d in (0.0, 55.0):
        assert clone.choose(RoundContext(d)) == p.choose(RoundContext(d))
        assert stops(clone, [0.9, 0.6, 0.9], d) == stops(p, [0.9, 0.6, 0.9], d)


@pytest.mark.parametrize("spec, match", [("specdec++:1.5", "in \\[0, 1\\]"), ("specdec++:-0.1", "in \\[0, 1\\]"),
                                         ("specdec++:x", "not a valid float"), ("specdec++:nan", "finite"),
                                         ("specdec++-delay:3", "takes no argument")])
def test_bad_specdec_specs_are_refused(spec, match):
    with pytest.raises(ControlError, match=match):
        make_policy(spec, max_length=8, profile=HAND)


def test_stop_signals():
    with pytest.raises(ControlError, match="needs a profile"):
        make_policy("specdec++-delay", max_length=8)
    assert make_policy("specdec++", max_length=8).spec == "specdec++:0.7"
    assert make_policy("hf-confidence:0.4", max_length=8).stop_signal == "confidence"
    for spec in ("fixed:3", "oracle", "ucb-specstop", "target-only"):
        assert make_policy(spec, max_length=8, profile=HAND).stop_signal is None, spec
    auto = make_policy("auto", max_length=8)  # reads the head where there is one, drafts fixed lengths where not
    assert auto.stop_signal == "acceptance" and auto.stop_optional
    assert not make_policy("specdec++:0.7", max_length=8).stop_optional


# --- (b) the shipped head --------------------------------------------------------------
def held_out_windows(n, seed=12345, length=120):
    g = np.random.default_rng(seed)
    docs = [d.encode("utf-8") for d in corpus_documents()]
    out = []
    for _ in range(n):
        doc = docs[int(g.integers(len(docs)))]
        lo = int(g.integers(max(1, len(doc) - length)))
        out.append(list(doc[lo: lo + int(g.integers(16, length))]) or list(doc[:16]))
    return out


def test_shipped_head_beats_a_constant_predictor_on_held_out_drafts(pair):
    head = head_for(pair)
    assert load_head() is not None
    data = collect(pair, held_out_windows(40))
    with torch.no_grad():
        pred = torch.sigmoid(head(data["hidden"], data["log_q"], data["entropy"]))
    const = float(data["soft"].mean())  # the best constant in hindsight, even
    brier = float(((pred - data["soft"]) ** 2).mean())
    brier_const = float(((const - data["soft"]) ** 2).mean())
    assert brier < 0.8 * brier_const, (brier, brier_const)


def test_a_missing_or_mismatched_head_is_a_one_line_error(pair, tiny_pair, tmp_path):
    with pytest.raises(ModelError, match="no acceptance head .*specstop train-head"):
        head_for(pair, tmp_path)
    with pytest.raises(ModelError, match="hidden size"):
        head_for(tiny_pair)


# --- (c) lossless with the head in the loop ------------------------------------------
@pytest.mark.parametrize("spec, delay_ms", [("specdec++:0.7", 0.0), ("specdec++-delay", 0.0),
                                            ("specdec++-delay", 55.0)])
def test_greedy_specdec_is_lossless_and_stops_early(pair, spec, delay_ms):
    prompt = pair.tokenizer.encode(corpus_documents()[3][:200], add_special_tokens=False)
    ref = target_only_generate(pair, prompt, 64)
    policy = make_policy(spec, max_length=8, profile=load_profile(BUNDLED_PROFILE))
    res = speculative_generate(pair, prompt, 64, policy, delay_ms=delay_ms)
    assert res.token_ids == ref.token_ids
    if delay_ms == 0.0:  # h(0) ~ 0.3 for the bundled profile; at 55 ms h ~ 0.94 and full drafts are right
        assert any(L < 8 for L in res.lengths_per_round), res.lengths_per_round
    else:
        assert np.mean(res.lengths_per_round) > 7, res.lengths_per_round


def drafts_asking_hidden_states(model):
    """A list that records, per draft forward, whether it computed hidden states (and the hook)."""
    asked = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: asked.append(bool(kwargs.get("output_hidden_states"))), with_kwargs=True)
    return asked, hook


def test_greedy_auto_reads_the_head_and_is_lossless(pair):
    prompt = pair.tokenizer.encode(corpus_documents()[3][:200], add_special_tokens=False)
    ref = target_only_generate(pair, prompt, 64)
    asked, hook = drafts_asking_hidden_states(pair.draft)
    try:
        res = speculative_generate(pair, prompt, 64, make_policy("auto", max_length=8), delay_ms=20.0)
    finally:
        hook.remove()
    assert res.token_ids == ref.token_ids
    assert any(asked)  # from the third round the head is read after every drafted token


def test_auto_on_a_pair_without_a_head_drafts_fixed_lengths(tiny_pair):
    prompt = [1, 2, 3, 0, 1, 2, 3, 1]
    ref = target_only_generate(tiny_pair, prompt, 24)
    asked, hook = drafts_asking_hidden_states(tiny_pair.draft)
    try:
        res = speculative_generate(tiny_pair, prompt, 24, make_policy("auto", max_length=8))
    finally:
        hook.remove()
    assert res.token_ids == ref.token_ids and asked and not any(asked)


# --- (d) hidden states only when a rule reads them -----------------------------------
def test_hidden_states_are_computed_only_when_asked(pair):
    asked = []
    hook = pair.draft.register_forward_pre_hook(
        lambda m, args, kwargs: asked.append(bool(kwargs.get("output_hidden_states"))), with_kwargs=True)
    steps = []

    def rule(step):
        steps.append(step)
        return False

    try:
        ctx = pair.tokenizer.encode(corpus_documents()[1][:100], add_special_tokens=False)
        s = DraftSession(pair.draft, ctx, pair.vocab_size)
        asked.clear()
        d = s.propose(6)  # no stop rule: no hidden states, no callback
        assert len(d) == 6 and asked and not any(asked)
        s = DraftSession(pair.draft, ctx, pair.vocab_size)
        asked.clear()
        s.propose(6, stop=rule)  # a rule that does not read hidden states
        assert not any(asked) and [st.position for st in steps] == [1, 2, 3, 4, 5]
        assert all(st.hidden is None and 0 < st.prob <= 1 and st.logits.shape[-1] == pair.vocab_size for st in steps)
        assert [st.token for st in steps] == d.tokens[:5]
        steps.clear()
        s = DraftSession(pair.draft, ctx, pair.vocab_size)
        asked.clear()
        s.propose(6, stop=rule, hidden=True)
        assert all(asked) and all(st.hidden is not None and st.hidden.shape == (pair.draft.config.hidden_size,)
                                  for st in steps)
    finally:
        hook.remove()


# --- the edge: the head in the loop over NATS, and a clear refusal without one ---------
async def test_edge_serves_specdec_losslessly(broker, pair, tmp_path):
    prompt = corpus_documents()[2][:150]
    async with cluster(broker.url, pair, tmp_path) as (client, edge, _):
        ref = await generate_stream(client, GenerateRequest("ref", prompt=prompt, max_new_tokens=48,
                                                            policy="target-only"), 60)
        res = await generate_stream(client, GenerateRequest("sd", prompt=prompt, max_new_tokens=48,
                                                            policy="specdec++:0.7"), 60)
        assert ref.ok and res.ok and res.token_ids == ref.token_ids
        assert isinstance(edge.heads.loaded, torch.nn.Module)


def no_head():
    raise ModelError("no acceptance head at /nowhere")


async def test_edge_without_a_usable_head_serves_auto_with_fixed_lengths(broker, pair, tmp_path):
    prompt = corpus_documents()[2][:150]
    async with cluster(broker.url, pair, tmp_path) as (client, edge, _):
        edge.heads = HeadSlot(no_head)  # a draft without a usable head
        ref = await generate_stream(client, GenerateRequest("ref", prompt=prompt, max_new_tokens=32,
                                                            policy="target-only"), 60)
        asked, hook = drafts_asking_hidden_states(pair.draft)
        try:
            res = await generate_stream(client, GenerateRequest("auto", prompt=prompt, max_new_tokens=32,
                                                                policy="auto"), 60)
        finally:
            hook.remove()
        assert res.ok and res.token_ids == ref.token_ids
        assert asked and not any(asked)


async def test_edge_without_a_usable_head_refuses_specdec_with_one_line(broker, tiny_pair, tmp_path):
    async with cluster(broker.url, tiny_pair, tmp_path, policy="fixed:2") as (client, edge, _):
        res = await generate_stream(client, GenerateRequest("sd", prompt_ids=Int32Array([1, 2, 3]), max_new_tokens=4,
                                                            policy="specdec++:0.7"), 30)
        assert not res.ok and res.error_code == "bad_message"
        assert "acceptance head" in res.error and "\n" not in res.error
