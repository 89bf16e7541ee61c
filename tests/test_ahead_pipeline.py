"""Rounds in flight (`edge --ahead R`) through the real edge and cloud workers over a real nats-server."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from nodes.models.train_pair import corpus_documents
from nodes.speculative import target_only_generate
from pipeline.transport.client import generate_stream
from schemas import subjects
from schemas.ahead import AheadDraftMsg, encode_ahead
from schemas.codec import Int32Array, Limits, decode, encode
from schemas.messages import DraftMsg, ErrorMsg, GenerateRequest, VerdictMsg
from tests.pipeline_fixtures import cluster, read_log

VOCAB = 258  # the bundled pair's


def _prompts(n: int) -> list[str]:
    docs = corpus_documents()
    return [docs[7 * i + 3][: 80 + 20 * i] for i in range(n)]


def _round(request_id: str, rnd: int, tokens: list[int], context: list[int] | None = None,
           attempt: int = 0) -> DraftMsg:
    return DraftMsg(request_id, rnd, attempt, "edge-x", Int32Array(tokens), 100 + rnd,
                    context=None if context is None else Int32Array(context), session="s1")


async def _ask(client, data: bytes, timeout: float = 30):
    reply = await client.request(subjects.draft("edge-x"), data, timeout=timeout)
    return decode(reply.data, Limits(vocab_size=VOCAB), expect=(VerdictMsg, ErrorMsg))


def _verified(log_path, request_id: str) -> list[int]:
    return [e["round"] for e in read_log(log_path) if e["event"] == "verify" and e["request_id"] == request_id]


@pytest.mark.slow
@pytest.mark.parametrize("ahead,tree", [(2, None), (3, None), (2, "3x2"), (3, "4x2")])
async def test_greedy_output_with_rounds_in_flight_equals_target_only(broker, pair, tmp_path, ahead, tree):
    prompts = _prompts(3)
    refs = [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), 40).token_ids
            for p in prompts]
    async with cluster(broker.url, pair, tmp_path, channel="const:20", policy="fixed:3", ahead=ahead, tree=tree) as (
            client, edge, clouds):
        results = [await generate_stream(client, GenerateRequest(f"ahead-{i}", prompt=p, max_new_tokens=40), 120)
                   for i, p in enumerate(prompts)]
    for i, res in enumerate(results):
        assert res.ok, res.error
        assert res.token_ids == refs[i], f"prompt {i} with {ahead} rounds in flight differs from target-only"
    cloud = read_log(tmp_path / "cloud-1.jsonl")
    assert any(e["event"] == "verify" and e["ahead"] and e["tree"] == (tree is not None) for e in cloud), \
        "no round drafted ahead was verified"
    assert any(e["event"] in ("ahead_dropped", "voided") for e in cloud), "no round drafted ahead was voided"
    for i in range(3):  # each round number verified once per request, voided ones never
        rounds = _verified(tmp_path / "cloud-1.jsonl", f"ahead-{i}")
        assert rounds == sorted(set(rounds)), rounds


@pytest.mark.slow
async def test_tree_auto_with_rounds_in_flight_learns_its_spines_and_equals_target_only(broker, pair, tmp_path):
    prompts = _prompts(3)
    refs = [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), 40).token_ids
            for p in prompts]
    async with cluster(broker.url, pair, tmp_path, channel="const:20", policy="fixed:3", ahead=3, tree="auto") as (
            client, edge, clouds):
        results = [await generate_stream(client, GenerateRequest(f"auto-{i}", prompt=p, max_new_tokens=40), 120)
                   for i, p in enumerate(prompts)]
        learned = edge.trees.learner.rounds
    for i, res in enumerate(results):
        assert res.ok, res.error
        assert res.token_ids == refs[i], f"prompt {i} under --tree auto --ahead 3 differs from target-only"
    verified = [e for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "verify"]
    assert any(e["ahead"] and e["tree"] for e in verified), "no tree round drafted ahead was verified"
    assert learned >= sum(e["tree"] for e in verified) > 0  # every verified tree round taught the learner
    assert len({e["draft_length"] for e in verified if e["tree"]}) > 1, "the learner drafted one shape only"


@pytest.mark.slow
async def test_a_session_lost_with_rounds_in_flight_is_rebuilt_from_the_context(broker, pair, tmp_path):
    prompt = _prompts(1)[0]
    ref = target_only_generate(pair, pair.tokenizer.encode(prompt, add_special_tokens=False), 48).token_ids
    async with cluster(broker.url, pair, tmp_path, channel="const:20", policy="fixed:4", ahead=3) as (
            client, edge, clouds):
        async def drop_session():  # the verifier forgets the session between two rounds
            while True:
                await asyncio.sleep(0.005)
                key = next((k for k in clouds[0].sessions if k[:2] == ("edge-1", "lost")), None)
                s = clouds[0].sessions.get(key)
                if s is not None and s.next_round >= 3 and s.in_flight is None:
                    clouds[0].sessions.pop(key)
                    return

        dropper = asyncio.create_task(drop_session())
        res = await generate_stream(client, GenerateRequest("lost", prompt=prompt, max_new_tokens=48), 120)
        await asyncio.wait_for(dropper, 5)
    assert res.ok, res.error
    assert res.token_ids == ref
    verified = [e for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "verify"]
    assert any(e["context_resent"] for e in verified), "no round rebuilt the session from its context"


async def test_a_sampled_request_with_rounds_in_flight_streams_every_token(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, channel="const:20", policy="fixed:2", ahead=3) as (
            client, edge, clouds):
        res = await generate_stream(client, GenerateRequest("sampled", prompt=_prompts(1)[0], max_new_tokens=24,
                                                            temperature=0.9, seed=5), 60)
    assert res.ok, res.error
    assert len(res.token_ids) == 24


async def test_a_resent_round_in_flight_is_verified_once(broker, pair, tmp_path):
    prompt = pair.tokenizer.encode(_prompts(1)[0], add_special_tokens=False)
    ref = target_only_generate(pair, prompt, 8).token_ids
    r0 = _round("twice", 0, ref[0:2], context=prompt)           # kept: all accepted, the target says ref[2]
    r1 = AheadDraftMsg(_round("twice", 1, ref[3:5]), ref[2])    # drafted assuming round 0 ends with ref[2]
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        first = await asyncio.gather(_ask(client, encode(r0)), _ask(client, encode_ahead(r1)),
                                     _ask(client, encode_ahead(r1)))  # a duplicate while it waits
        resent1 = await _ask(client, encode(dataclasses.replace(r1.draft, attempt=1)))
        resent0 = await _ask(client, encode(dataclasses.replace(r0, attempt=2, context=None)))
    v0, v1, dup = first
    assert isinstance(v0, VerdictMsg) and (v0.accepted, v0.next_token) == (2, ref[2])
    assert isinstance(v1, VerdictMsg) and (v1.accepted, v1.next_token) == (2, ref[5])
    assert isinstance(dup, VerdictMsg) and (dup.accepted, dup.next_token) == (2, ref[5])
    assert isinstance(resent1, VerdictMsg) and (resent1.attempt, resent1.next_token) == (1, ref[5])
    assert isinstance(resent0, VerdictMsg) and (resent0.attempt, resent0.next_token) == (2, ref[2])
    assert _verified(tmp_path / "cloud-1.jsonl", "twice") == [0, 1]


async def test_a_round_on_a_broken_basis_is_voided_without_compute(broker, pair, tmp_path):
    prompt = pair.tokenizer.encode(_prompts(1)[0], add_special_tokens=False)
    ref = target_only_generate(pair, prompt, 8).token_ids
    wrong = (ref[2] + 1) % VOCAB
    r0 = _round("void", 0, ref[0:2], context=prompt)
    r1 = AheadDraftMsg(_round("void", 1, ref[3:5]), wrong)      # assumes a token the target will not say
    r2 = AheadDraftMsg(_round("void", 2, ref[6:7]), ref[5])     # built on the voided round
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        v0, e1, e2 = await asyncio.gather(_ask(client, encode(r0)), _ask(client, encode_ahead(r1)),
                                          _ask(client, encode_ahead(r2)))
        redrafted = await _ask(client, encode(_round("void", 1, ref[3:5])))  # round 1 again, on the verdict
    assert isinstance(v0, VerdictMsg) and v0.next_token == ref[2]
    assert isinstance(e1, ErrorMsg) and e1.code == "voided"
    assert isinstance(e2, ErrorMsg) and e2.code == "voided"
    assert isinstance(redrafted, VerdictMsg) and (redrafted.accepted, redrafted.next_token) == (2, ref[5])
    assert _verified(tmp_path / "cloud-1.jsonl", "void") == [0, 1]


async def test_a_bad_basis_is_refused_in_one_line_and_the_verifier_keeps_serving(broker, pair, tmp_path):
    prompt = pair.tokenizer.encode(_prompts(1)[0], add_special_tokens=False)
    r0 = _round("basis", 0, [5, 6], context=prompt)
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        await _ask(client, encode(r0))
        bad = dict(v=3, t="ahead_draft", draft=encode(_round("basis", 1, [7])), parent=5, assumed_next=6)
        import msgpack
        refused = await _ask(client, msgpack.packb(bad, use_bin_type=True))
        good = await _ask(client, encode(_round("basis", 1, [7])))
    assert isinstance(refused, ErrorMsg) and refused.code == "bad_message"
    assert "basis round 5 is not the round before round 1" in refused.message and "\n" not in refused.message
    assert isinstance(good, VerdictMsg)


async def test_an_old_verifier_answers_rounds_in_flight_version(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, channel="const:30", policy="fixed:3", ahead=2,
                       cloud_options={"max_ahead": 0}) as (client, _, _):
        res = await generate_stream(client, GenerateRequest("old-peer", prompt=_prompts(1)[0], max_new_tokens=24), 60)
    assert res.error_code == "version", res.error
    assert "schema version 3 is not supported" in res.error and "without --ahead" in res.error
