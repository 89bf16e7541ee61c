"""The static-shape verify path (CUDA graphs on a GPU, eager here) gives the eager slot path's verdicts.

On a CPU the static forward runs the very computation a GPU captures (bucketed rows and keys, pads and
idle rows routed to a scratch slot, positions and mask built from device inputs), so its verdicts, logits
and the slots' contents can be checked against `SlotCache.forward` here.
"""
from __future__ import annotations

import random

import pytest
import torch

from nodes.models.batch_verify import BatchVerifier, VerifyJob
from nodes.models.static_forward import StaticForward, batch_bucket, key_bucket
from schemas.rounds import Draft, SamplingParams, Verdict


def _contexts(pair, n: int, rng: random.Random) -> list[list[int]]:
    text = ("The history of the city begins with a small fishing village on the river. Over the centuries "
            "merchants, scholars and sailors came, and the harbour grew into one of the busiest of the coast. ")
    ids = pair.tokenizer.encode(text * 6, add_special_tokens=False)
    return [ids[rng.randrange(40): rng.randrange(60, len(ids))] for _ in range(n)]


def _run(pair, graphs: bool, batch_invariant: bool = False, rounds: int = 4, n: int = 5, temperature: float = 0.0):
    """Verdicts of `rounds` verify steps of `n` sessions (random drafts, same seeds either way)."""
    rng = random.Random(7)
    ver = BatchVerifier(pair.target, pair.vocab_size, max_slots=16, max_len=1024, graphs=graphs,
                        batch_invariant=batch_invariant)
    params = SamplingParams(temperature)
    ctxs = _contexts(pair, n, rng)
    res, _ = ver.run([VerifyJob(None, c, Draft([]), params) for c in ctxs])
    states = [r.state for r in res]
    verdicts, statics = [], []
    for k in range(rounds):
        jobs = []
        for j, s in enumerate(states):
            toks = [rng.randrange(pair.vocab_size) for _ in range(rng.randint(0, 6))]
            if temperature:
                q_ids = [[t, (t + 1) % pair.vocab_size] for t in toks]
                d = Draft(toks, seed=100 * k + j, q_ids=q_ids, q_probs=[[0.7, 0.3] for _ in toks])
            else:
                d = Draft(toks, seed=100 * k + j)
            jobs.append(VerifyJob(s, None, d, params))
        # the draft is the target's own greedy continuation half of the time, so drafts are often accepted
        out, stats = ver.run(jobs)
        assert stats.failed == 0 and stats.slot_rows == n, [o.error for o in out]
        statics.append(stats.static)
        verdicts.append([(o.verdict.accepted, o.verdict.next_token) for o in out])
    return verdicts, statics, [s.tokens for s in states], ver


def test_buckets():
    assert [batch_bucket(b) for b in (1, 2, 3, 5, 33, 64, 65)] == [1, 2, 4, 8, 64, 64, None]
    assert key_bucket(10, 4096) == 256 and key_bucket(257, 4096) == 512 and key_bucket(900, 768) == 768


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_static_path_gives_the_eager_paths_verdicts(pair, temperature):
    eager, e_static, e_tokens, _ = _run(pair, graphs=False, temperature=temperature)
    static, s_static, s_tokens, ver = _run(pair, graphs=True, temperature=temperature)
    assert not any(e_static) and all(s_static)
    assert static == eager
    assert s_tokens == e_tokens
    assert ver.static.captures == 0  # a CPU runs the static forward eagerly


def test_batch_invariant_mode_runs_one_forward_per_job_with_the_same_verdicts(pair):
    eager, _, _, _ = _run(pair, graphs=False)
    alone, _, _, _ = _run(pair, graphs=False, batch_invariant=True)
    assert alone == eager  # float32 on a CPU: no near-tie flips between batch shapes


@pytest.fixture(scope="module")
def gqa_pair():
    """A Qwen2-shaped random target whose query heads share K/V heads in pairs (the static path packs them)."""
    from pipeline.bench.verify import shape_pair

    return shape_pair("tiny")


@pytest.mark.parametrize("which", ["bundled", "grouped-query"])
def test_static_forward_writes_real_tokens_only_and_matches_eager_logits(pair, gqa_pair, which):
    """Slot contents after a static forward equal those after the eager one; pads go to the scratch slot."""
    pair = pair if which == "bundled" else gqa_pair
    rng = random.Random(3)
    ctxs = _contexts(pair, 3, rng)
    outs = {}
    for mode in ("eager", "static"):
        ver = BatchVerifier(pair.target, pair.vocab_size, max_slots=8, max_len=1024, graphs=mode == "static")
        res, _ = ver.run([VerifyJob(None, c, Draft([]), SamplingParams()) for c in ctxs])
        slots = [r.state.live_slot for r in res]
        feeds = [[5, 6, 7, 11, 12], [8], [9, 10]]
        before = [ver.cache.length(s) for s in slots]
        if mode == "static":
            out = ver.static.forward(slots, feeds)
            logits = [out.logits[b, : len(f)] for b, f in enumerate(feeds)]
        else:
            logits = ver.cache.forward(slots, feeds, [len(f) for f in feeds]).logits
        kv = [(ver.cache.k[:, s, :, : before[b] + len(feeds[b])].clone(),
               ver.cache.v[:, s, :, : before[b] + len(feeds[b])].clone()) for b, s in enumerate(slots)]
        outs[mode] = (logits, kv, [ver.cache.length(s) for s in slots])
    (le, kve, ne), (ls, kvs, ns) = outs["eager"], outs["static"]
    assert ne == ns
    for a, b in zip(le, ls):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for (ka, va), (kb, vb) in zip(kve, kvs):
        torch.testing.assert_close(ka, kb, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-5)


def test_cuda_graphs_need_a_cuda_device(pair):
    ver = BatchVerifier(pair.target, pair.vocab_size, max_slots=4, max_len=256)
    with pytest.raises(Exception, match="CUDA graphs need a CUDA device, not cpu"):
        StaticForward(ver.cache, pair.vocab_size, capture=True)


def test_grouped_query_shape_static_path_matches_eager(gqa_pair):
    """A Qwen2-shaped target with grouped K/V heads (packed GQA attention in the static path): same verdicts
    as the eager batched path over 3 steps of 6 sessions, and as the per-request path (float32)."""
    from pipeline.bench.verify import _contexts, verdict_flips

    tiny = gqa_pair
    assert tiny.target.config.num_attention_heads // tiny.target.config.num_key_value_heads == 2
    rng = random.Random(5)
    out = verdict_flips(tiny, _contexts(tiny, 6, 60, 120, rng), 4, 3, rng)
    assert out["verdicts"] == 18
    assert out["differ_from_eager_batched"] == {"fast": 0, "invariant": 0, "per_request": 0}


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_static_draft_steps_draft_what_eager_steps_draft(pair, temperature):
    """The edge's batched draft step at static shapes (CUDA graphs on a GPU, eager here): the same drafts,
    the same q distributions, and specdec++'s head reads the same hidden states."""
    from control import RoundContext, make_policy
    from nodes.models.batch_draft import DraftJob, DraftRows, SlotDraftSession
    from nodes.models.head import head_for
    from nodes.models.slots import SlotCache
    from nodes.protocol.acting import stop_rule

    rng = random.Random(9)
    ctxs = _contexts(pair, 4, rng)
    head = head_for(pair)
    params = SamplingParams(temperature)
    out = {}
    for graphs in (False, True):
        cache = SlotCache(pair.draft, max_slots=8, max_len=4096)
        sessions = [SlotDraftSession(cache, c, pair.vocab_size, params) for c in ctxs]
        drafts = []
        for rnd in range(3):
            rows = DraftRows(cache, graphs=graphs)
            res = {}
            for i, s in enumerate(sessions):
                pol = make_policy("specdec++" if i % 2 else "fixed:5")
                stop, hidden = stop_rule(pol, RoundContext(stops=True), head)
                assert rows.add(DraftJob(s, 5, 10 * rnd + i, stop, hidden), i) is None
            while rows:
                for key, r in rows.step():
                    assert r.error is None, r.error
                    res[key] = r.draft
            for i, s in enumerate(sessions):  # the target "accepts" two tokens and appends one
                d = res[i]
                s.apply(Verdict(min(2, len(d)), 7, 0.0))
            drafts.append([(res[i].tokens, res[i].q_ids, res[i].stopped_early) for i in range(len(sessions))])
        out[graphs] = (drafts, getattr(cache, "_static_runner", None))
    assert out[False][1] is None and out[True][1] is not None  # the static path ran
    assert out[True][0] == out[False][0]
