"""Greedy speculative output is token for token the target's own greedy output."""
import dataclasses

import pytest

from control import make_policy
from nodes.models.train_pair import corpus_documents
from nodes.speculative import speculative_generate, target_only_generate
from schemas.rounds import SamplingParams


@pytest.fixture(scope="module")
def prompts(pair):
    docs = corpus_documents()
    short = pair.tokenizer.encode(docs[3][:80], add_special_tokens=False)
    long = pair.tokenizer.encode(docs[10][:700], add_special_tokens=False)
    assert len(long) > 500
    return {"short": short, "long": long}


@pytest.fixture(scope="module")
def references(pair, prompts):
    return {k: target_only_generate(pair, p, 160) for k, p in prompts.items()}


@pytest.mark.parametrize("length", range(1, 9))
@pytest.mark.parametrize("which", ["short", "long"])
def test_greedy_speculation_equals_target_only(pair, prompts, references, which, length):
    res = speculative_generate(pair, prompts[which], 160, make_policy(f"fixed:{length}"))
    ref = references[which]
    assert res.token_ids == ref.token_ids
    assert res.finish_reason == ref.finish_reason


def test_reference_runs_are_long_and_exercise_rejections(pair, prompts, references):
    assert all(len(r.token_ids) >= 128 or r.finish_reason == "eos" for r in references.values())
    res = speculative_generate(pair, prompts["long"], 160, make_policy("fixed:8"))
    assert 0 in res.accepted_per_round or min(res.accepted_per_round) < 8  # some rejection
    assert 8 in res.accepted_per_round  # some fully accepted round


def test_adaptive_policy_output_is_still_exact(pair, prompts, references):
    res = speculative_generate(pair, prompts["long"], 160, make_policy("auto", max_length=8))
    assert res.token_ids == references["long"].token_ids
    assert len(set(res.lengths_per_round)) > 1


def test_greedy_generation_that_stops_at_a_stop_token_matches(pair):
    """Stop ids are a set (real models list several). Greedy decoding of this small pair
    rarely reaches <eos>, so a token from its own unconstrained output is added as a
    stop id: decoding must end at its first occurrence, and speculation with it."""
    prompt = pair.tokenizer.encode(corpus_documents()[7][:200], add_special_tokens=False)
    free = target_only_generate(pair, prompt, 200)
    stopping = dataclasses.replace(pair, eos_ids=pair.eos_ids | {free.token_ids[60]})
    ref = target_only_generate(stopping, prompt, 200)
    assert ref.finish_reason == "eos" and len(ref.token_ids) <= 60
    assert ref.token_ids == free.token_ids[: len(ref.token_ids)]
    for length in (1, 3, 8):
        res = speculative_generate(stopping, prompt, 200, make_policy(f"fixed:{length}"))
        assert res.token_ids == ref.token_ids and res.finish_reason == "eos"


@pytest.mark.slow
def test_the_pair_emits_its_real_eos_at_a_topic_end(pair):
    """The bundled pair learned <eos>: sampling at the end of a pydoc topic stops there."""
    doc = corpus_documents()[1]
    prompt = pair.tokenizer.encode(doc[-300:], add_special_tokens=False)
    reasons = [speculative_generate(pair, prompt, 40, make_policy("fixed:4"), SamplingParams(1.0), seed=s).finish_reason
               for s in range(30)]
    assert reasons.count("eos") >= 3, reasons


def test_generation_that_stops_at_the_length_limit_matches(pair, prompts):
    ref = target_only_generate(pair, prompts["short"], 7)
    res = speculative_generate(pair, prompts["short"], 7, make_policy("fixed:5"))
    assert len(ref.token_ids) == 7 and res.token_ids == ref.token_ids and res.finish_reason == "length"
