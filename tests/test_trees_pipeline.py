"""Draft trees through the real pipeline: edge and cloud workers over a real nats-server."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from nodes.models.train_pair import corpus_documents
from nodes.speculative import target_only_generate
from pipeline.transport.client import generate_stream
from schemas import subjects
from schemas.codec import Limits, decode
from schemas.messages import ErrorMsg, GenerateRequest, VerdictMsg
from schemas.trees import TreeDraftMsg, encode_tree
from tests.pipeline_fixtures import cluster, read_log


def _prompts(n: int) -> list[str]:
    docs = corpus_documents()
    return [docs[7 * i + 3][: 80 + 20 * i] for i in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["3x2", "5x3"])
async def test_greedy_output_with_trees_equals_target_only(broker, pair, tmp_path, shape):
    prompts = _prompts(3)
    refs = [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), 40).token_ids
            for p in prompts]
    async with cluster(broker.url, pair, tmp_path, tree=shape) as (client, edge, clouds):
        async def drop_session():  # request 1's verifier session vanishes mid-stream: its context is resent
            while True:
                await asyncio.sleep(0.01)
                key = next((k for k in clouds[0].sessions if k[:2] == ("edge-1", "tree-1")), None)
                s = clouds[0].sessions.get(key)
                if s is not None and s.next_round >= 2 and s.in_flight is None:
                    clouds[0].sessions.pop(key)
                    return

        dropper = asyncio.create_task(drop_session())
        results = await asyncio.gather(*(
            generate_stream(client, GenerateRequest(f"tree-{i}", prompt=p, max_new_tokens=40), 120)
            for i, p in enumerate(prompts)))
        await asyncio.wait_for(dropper, 5)
    for i, res in enumerate(results):
        assert res.ok, res.error
        assert res.token_ids == refs[i], f"prompt {i} with tree {shape} differs from target-only"
    verified = [e for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "verify"]
    depth, width = (int(x) for x in shape.split("x"))
    assert any(e["tree"] and e["draft_length"] == depth * width for e in verified), "no full tree verified"
    assert any(e["accepted"] > 0 for e in verified if e["tree"]), "no tree node accepted"
    assert any(e["batch_size"] > 1 for e in verified if e["tree"]), "no two tree rounds verified in one forward"
    assert any(e["tree"] and e["context_resent"] for e in verified), "no tree round rebuilt a session from its context"


@pytest.mark.slow
async def test_greedy_output_with_the_learned_shapes_equals_target_only(broker, pair, tmp_path):
    """`--tree auto` at 20 ms one-way: the learner changes the shape from round to round (chains,
    spines, optimal trees); the output must not change with it."""
    prompts = _prompts(3)
    refs = [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), 40).token_ids
            for p in prompts]
    async with cluster(broker.url, pair, tmp_path, channel="const:20", tree="auto") as (client, edge, _):
        for i, p in enumerate(prompts):  # one at a time: each request's rounds teach the next one's
            res = await generate_stream(client, GenerateRequest(f"auto-{i}", prompt=p, max_new_tokens=40), 120)
            assert res.ok and res.token_ids == refs[i], f"prompt {i} with learned trees differs from target-only"
    rounds = [e for e in read_log(tmp_path / "edge-1.jsonl") if e["event"] == "round" and e.get("tree_depth")]
    assert len({(r["tree_depth"], r["draft_length"]) for r in rounds}) > 1, "the learner never changed shape"
    assert any(r["draft_length"] > r["tree_depth"] for r in rounds), "no round drafted more than a chain"


async def test_a_sampled_tree_request_replays_to_the_same_tokens(broker, pair, tmp_path):
    prompt = _prompts(1)[0]
    async with cluster(broker.url, pair, tmp_path, tree="3x2") as (client, edge, clouds):
        runs = [await generate_stream(client, GenerateRequest(f"sampled-{i}", prompt=prompt, max_new_tokens=24,
                                                              temperature=0.9, seed=5), 60) for i in range(2)]
    assert all(r.ok for r in runs), [r.error for r in runs]
    assert len(runs[0].token_ids) == 24 and runs[0].token_ids == runs[1].token_ids
    assert any(e["event"] == "verify" and e["tree"] for e in read_log(tmp_path / "cloud-1.jsonl"))


def _other(token: int, vocab: int) -> int:
    """A token that is not `token` (a candidate the target must reject)."""
    return (token + 1) % vocab


async def _ask(client, edge_id: str, msg: TreeDraftMsg):
    reply = await client.request(subjects.draft(edge_id), encode_tree(msg), timeout=30)
    return decode(reply.data, Limits(vocab_size=VOCAB), expect=(VerdictMsg, ErrorMsg))


VOCAB = 258  # the bundled pair's


async def test_a_replayed_tree_round_is_verified_once_and_answered_with_the_same_path(broker, pair, tmp_path):
    prompt = pair.tokenizer.encode(_prompts(1)[0], add_special_tokens=False)
    ref = target_only_generate(pair, prompt, 6).token_ids
    v = pair.vocab_size
    # rank 2 under the root is the target's token, rank 1 is not: the accepted path is nodes 1, 2, so
    # their K/V rows move past node 0's when the cache keeps only the path
    round0 = TreeDraftMsg("edge-x", "replay", 0, 0, 11, [_other(ref[0], v), ref[0], ref[1], _other(ref[2], v)],
                          [-1, -1, 1, 1], context=prompt, session="s1")
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        first = await _ask(client, "edge-x", round0)
        again = await _ask(client, "edge-x", dataclasses.replace(round0, attempt=1, context=None))
        round1 = TreeDraftMsg("edge-x", "replay", 1, 0, 12, [ref[3], _other(ref[4], v)], [-1, 0], session="s1")
        second = await _ask(client, "edge-x", round1)
    assert isinstance(first, VerdictMsg) and list(first.path) == [1, 2] and first.next_token == ref[2]
    assert isinstance(again, VerdictMsg) and again.attempt == 1
    assert (list(again.path), again.next_token) == (list(first.path), first.next_token)
    # applied once: the next round continues from prompt + 3 tokens, exactly as the target alone would
    assert isinstance(second, VerdictMsg) and list(second.path) == [0] and second.next_token == ref[4]
    log = read_log(tmp_path / "cloud-1.jsonl")
    assert [e["round"] for e in log if e["event"] == "verify" and e["request_id"] == "replay"] == [0, 1]
    assert any(e["event"] == "verdict_resent" for e in log)


async def test_a_malformed_tree_draft_is_logged_and_the_verifier_keeps_serving(broker, pair, tmp_path):
    prompt = pair.tokenizer.encode(_prompts(1)[0], add_special_tokens=False)
    bad = TreeDraftMsg("edge-x", "bad", 0, 0, 1, [5, 6], [-1, 3], context=prompt, session="s2")  # parent after child
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        refused = await _ask(client, "edge-x", bad)
        good = await _ask(client, "edge-x", dataclasses.replace(bad, request_id="good", parents=[-1, 0]))
    assert isinstance(refused, ErrorMsg) and refused.code == "bad_message" and "parent" in refused.message
    assert isinstance(good, VerdictMsg) and good.path is not None
    logged = [e for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "bad_message"]
    assert logged and "node 1 has parent 3" in logged[0]["error"]


async def test_a_chain_only_verifier_answers_a_tree_round_version(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, tree="3x2", cloud_options={"trees": False}) as (client, _, _):
        res = await generate_stream(client, GenerateRequest("old-peer", prompt=_prompts(1)[0], max_new_tokens=8), 60)
    assert res.error_code == "version", res.error
    assert "schema version 2 is not supported" in res.error
