"""The stream tree through the real edge and cloud workers over a real nats-server (wire v4)."""
from __future__ import annotations

import asyncio
import time

import msgpack
import pytest

from control.stream_choice import StreamChoice

import nodes.edge_stream as edge_stream_module
from nodes.config import StreamShape
from nodes.edge_stream import StreamTreeRun
from nodes.models.train_pair import corpus_documents
from nodes.protocol.stream_tree import NodesMsg
from nodes.speculative import target_only_generate
from pipeline.transport.client import generate_stream
from schemas import subjects
from schemas.codec import Limits, decode
from schemas.messages import ErrorMsg, GenerateRequest
from schemas.stream_tree import StreamNodes, decode_nodes, encode_nodes
from tests.pipeline_fixtures import cluster, read_log, wait_for

NEW = 40


def _prompts(n: int) -> list[str]:
    docs = corpus_documents()
    return [docs[7 * i + 3][: 80 + 20 * i] for i in range(n)]


def _refs(pair, prompts: list[str]) -> list[list[int]]:
    return [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), NEW).token_ids
            for p in prompts]


async def _generate(client, prompts: list[str], tag: str):
    return [await generate_stream(client, GenerateRequest(f"{tag}-{i}", prompt=p, max_new_tokens=NEW), 60)
            for i, p in enumerate(prompts)]


async def test_greedy_output_over_the_workers_equals_target_only(broker, pair, tmp_path):
    prompts = _prompts(3)
    async with cluster(broker.url, pair, tmp_path, channel="const:10", stream_tree=StreamShape()) as (client, _, _):
        results = await _generate(client, prompts, "st")
    for i, (res, ref) in enumerate(zip(results, _refs(pair, prompts))):
        assert res.ok, res.error
        assert res.token_ids == ref, f"prompt {i}: the stream tree's output differs from target-only"
    edge = read_log(tmp_path / "edge-1.jsonl")
    verdicts = [e for e in edge if e["event"] == "stream_verdict" and e["request_id"] == "st-0"]
    assert sum(e["tokens"] for e in verdicts) == NEW and verdicts[-1]["done"]
    cloud = read_log(tmp_path / "cloud-1.jsonl")
    ends = [e["reason"] for e in cloud if e["event"] == "session_end" and e.get("stream_tree")]
    assert ends[:2] == ["end", "end"] and len(ends) == 3  # the last end may race the shutdown


async def test_concurrent_streams_each_equal_target_only(broker, pair, tmp_path):
    prompts = _prompts(3)
    async with cluster(broker.url, pair, tmp_path, channel="const:10", stream_tree=StreamShape()) as (client, _,
                                                                                                     clouds):
        results = await asyncio.gather(*(generate_stream(client, GenerateRequest(f"c-{i}", prompt=p,
                                                                                 max_new_tokens=NEW), 60)
                                         for i, p in enumerate(prompts)))
        opened = clouds[0].streams.counters.opened
    for i, (res, ref) in enumerate(zip(results, _refs(pair, prompts))):
        assert res.ok, res.error
        assert res.token_ids == ref, f"prompt {i}: concurrent streams changed the output"
    assert opened == 3  # one session per request: none lost and reopened


async def test_auto_tries_rounds_then_the_stream_tree_and_both_equal_target_only(broker, pair, tmp_path):
    prompts = _prompts(3)
    async with cluster(broker.url, pair, tmp_path, channel="const:20", stream_tree=StreamShape(auto=True)) as (
            client, _, _):
        results = await _generate(client, prompts, "auto")
    for i, (res, ref) in enumerate(zip(results, _refs(pair, prompts))):
        assert res.ok, res.error
        assert res.token_ids == ref, f"prompt {i} under --stream-tree auto differs from target-only"
    edge = read_log(tmp_path / "edge-1.jsonl")
    choices = [e for e in edge if e["event"] == "stream_choice"]
    assert [(e["mode"], e["reason"]) for e in choices[:2]] == [("chain", "untried"), ("stream", "trial")]
    assert len(choices) == 3 and choices[1]["one_way_ms"] >= 20.0  # measured by the chain's rounds
    assert choices[2]["stream_ms_per_token"] is not None  # learned before the trial's last chunk went out
    assert any(e["event"] == "stream_done" and e["request_id"] == "auto-1" for e in edge)


async def test_width_auto_starts_at_the_default_then_models_every_width_and_equals_target_only(broker, pair,
                                                                                                tmp_path):
    prompts = _prompts(3)
    async with cluster(broker.url, pair, tmp_path, channel="const:20",
                       stream_tree=StreamShape(width_auto=True)) as (client, _, _):
        results = await _generate(client, prompts, "wa")
    for i, (res, ref) in enumerate(zip(results, _refs(pair, prompts))):
        assert res.ok, res.error
        assert res.token_ids == ref, f"prompt {i} under --stream-width auto differs from target-only"
    edge = read_log(tmp_path / "edge-1.jsonl")
    picks = [e for e in edge if e["event"] == "stream_width"]
    assert len(picks) == 3 and (picks[0]["width"], picks[0]["reason"]) == (StreamShape().width, "start")
    # after one request the misses of every width are known, the compute only of the width that ran
    assert all(m is not None for m in picks[1]["misses_per_token"].values())
    assert [w for w, ms in picks[1]["ms_per_token"].items() if ms is not None] == [str(StreamShape().width)]
    done = {e["request_id"]: e for e in edge if e["event"] == "stream_done"}
    assert [done[f"wa-{i}"]["width"] for i in range(3)] == [p["width"] for p in picks]
    assert all(done[f"wa-{i}"]["judged"] == NEW and len(done[f"wa-{i}"]["covered"]) == 8 for i in range(3))


async def test_auto_at_zero_delay_never_tries_the_stream_tree(broker, pair, tmp_path):
    prompts = _prompts(3)
    async with cluster(broker.url, pair, tmp_path, channel="const:0", stream_tree=StreamShape(auto=True)) as (
            client, _, _):
        results = await _generate(client, prompts, "zero")
    assert all(res.ok for res in results)
    edge = read_log(tmp_path / "edge-1.jsonl")
    choices = [e for e in edge if e["event"] == "stream_choice"]
    assert len(choices) == 3 and (choices[0]["mode"], choices[0]["reason"]) == ("chain", "untried")
    # Loopback delay is ~0.1 ms quiet but can reach a few ms on a loaded machine, so the test asserts
    # the rule on the numbers the edge logged: no stream trial unless the bound allowed one.
    margin = StreamChoice().trial_margin
    for e in choices[1:]:
        if e["chain_ms_per_token"] - e["stream_floor_ms_per_token"] <= margin * e["chain_ms_per_token"]:
            assert (e["mode"], e["reason"]) == ("chain", "bound"), e
    if all(e["one_way_ms"] < 0.5 for e in choices):  # a quiet machine: the bound forbids every trial
        assert [e["mode"] for e in choices] == ["chain"] * 3
        assert not any(e["event"] == "stream_done" for e in edge)


class FaultyRun(StreamTreeRun):
    """The edge's run with a lossy link: chosen nodes messages (up) and verdicts (down) are dropped or
    delivered twice, counted per request in sending order. Up message 0 is the context alone (it opens
    the verifier's session) and message 1 always carries the root's expansion, without which the
    verifier decides nothing: each request must stall and resend, at any timing; where the other
    faults land depends on the timing."""

    DROP_UP, DUP_UP, DROP_DOWN, DUP_DOWN = {0, 1, 4, 9}, {2, 6, 12}, {0, 3}, {1, 5}

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.up_n = self.down_n = 0

    async def _publish(self, data: bytes) -> None:
        n, self.up_n = self.up_n, self.up_n + 1
        if n in self.DROP_UP:
            return
        for _ in range(2 if n in self.DUP_UP else 1):
            await super()._publish(data)

    async def _on_reply(self, msg) -> None:
        n, self.down_n = self.down_n, self.down_n + 1
        if n in self.DROP_DOWN:
            return
        for _ in range(2 if n in self.DUP_DOWN else 1):
            await super()._on_reply(msg)


async def test_dropped_and_duplicated_messages_cost_only_time(broker, pair, tmp_path, monkeypatch):
    prompts = _prompts(2)
    monkeypatch.setattr(edge_stream_module, "StreamTreeRun", FaultyRun)
    shape = StreamShape(resend_after_s=0.3)
    async with cluster(broker.url, pair, tmp_path, channel="const:5", stream_tree=shape) as (client, _, _):
        results = await _generate(client, prompts, "lossy")
    for i, (res, ref) in enumerate(zip(results, _refs(pair, prompts))):
        assert res.ok, res.error
        assert res.token_ids == ref, f"prompt {i}: a lossy link changed the stream tree's output"
    done = [e for e in read_log(tmp_path / "edge-1.jsonl") if e["event"] == "stream_done"]
    assert len(done) == 2 and all(e["resends"] > 0 for e in done), "a lost root expansion was not resent"


async def test_a_verifier_without_the_stream_tree_answers_version(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, channel="const:0", stream_tree=StreamShape(),
                       cloud_options={"stream_tree": False}) as (client, _, _):
        res = (await _generate(client, _prompts(1), "old"))[0]
    assert not res.ok and res.error_code == "version", res.error
    assert "--stream-tree" in res.error


async def test_garbage_is_logged_and_the_verifier_keeps_serving(broker, pair, tmp_path):
    limits = Limits(vocab_size=pair.vocab_size)
    good = encode_nodes(StreamNodes("edge-1", "g-1", "s1", 0, NodesMsg((1, 2, 5), ((1, ((2, 7),)),)),
                                    context=(3, 4, 5)))
    body = msgpack.unpackb(good)
    body["groups"] = [[1, [2, 7, 3, 7]]]  # repeated child tokens
    bad = msgpack.packb(body)
    async with cluster(broker.url, pair, tmp_path, channel="const:0", stream_tree=StreamShape()) as (client, _, _):
        answer = await client.request(subjects.draft("edge-1"), bad, timeout=10)
        refusal = decode(answer.data, limits, expect=(ErrorMsg,))
        await client.publish(subjects.draft("edge-1"), b"\x94\x04garbage")
        res = (await _generate(client, _prompts(1), "after"))[0]
    assert refusal.code == "bad_message" and "repeated child tokens" in refusal.message
    assert res.ok and res.token_ids == _refs(pair, _prompts(1))[0]
    refused = [e for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "bad_message"]
    assert any(e.get("stream_tree") for e in refused) and len(refused) >= 2


async def test_a_client_that_goes_away_stops_the_stream_and_frees_the_verifier(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, channel="const:10", stream_tree=StreamShape()) as (client, edge,
                                                                                                     clouds):
        req = GenerateRequest("gone", prompt=_prompts(1)[0], max_new_tokens=1500)
        task = asyncio.create_task(generate_stream(client, req, 30))
        await wait_for(lambda: clouds[0].streams.sessions and "gone" in edge.live)
        task.cancel()
        await wait_for(lambda: not edge.live)
        await wait_for(lambda: not clouds[0].streams.sessions)
    ends = [e for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "session_end" and e.get("stream_tree")]
    assert [e["reason"] for e in ends] == ["end"]


async def test_with_stream_fill_the_workers_output_equals_target_only(broker, pair, tmp_path):
    """`specstop cloud --stream-fill`: over a 10 ms link the verifier's sessions fill their idle time;
    the edge restarts behind what was filled and the output is still the target's."""
    prompts = _prompts(3)
    async with cluster(broker.url, pair, tmp_path, channel="const:10", stream_tree=StreamShape(),
                       cloud_options={"stream_fill": True}) as (client, _, _):
        results = await _generate(client, prompts, "fill")
    for i, (res, ref) in enumerate(zip(results, _refs(pair, prompts))):
        assert res.ok, res.error
        assert res.token_ids == ref, f"prompt {i}: the stream tree with fill differs from target-only"
    cloud = read_log(tmp_path / "cloud-1.jsonl")
    ends = [e for e in cloud if e["event"] == "session_end" and e.get("stream_tree")]
    assert ends and sum(e["fills"] for e in ends) > 0


def test_stream_fill_is_off_by_default():
    from nodes.config import CloudConfig
    from pipeline.cli import build_parser
    assert not CloudConfig().stream_fill
    assert build_parser().parse_args(["cloud", "--stream-fill"]).stream_fill
    assert not build_parser().parse_args(["cloud"]).stream_fill


async def test_the_context_goes_out_before_the_first_draft_forward(broker, pair, tmp_path):
    """The cloud opens the session and prefills the prompt while the edge drafts its first level: a
    request's first message carries the context and no groups; its first groups come after it."""
    import nats

    seen: list[StreamNodes] = []

    async def sniff(m) -> None:
        seen.append(decode_nodes(m.data))

    nc = await nats.connect(broker.url)
    try:
        sub = await nc.subscribe(f"{subjects.DRAFT_PREFIX}.>", cb=sniff)
        await nc.flush()  # the server has the subscription before the first request
        async with cluster(broker.url, pair, tmp_path, channel="const:10", stream_tree=StreamShape()) as (client, _, _):
            res = await generate_stream(client, GenerateRequest("open-0", prompt=_prompts(1)[0], max_new_tokens=8), 60)
        await sub.unsubscribe()
    finally:
        await nc.close()
    assert res.ok, res.error
    assert res.token_ids == _refs(pair, _prompts(1))[0][:8]
    mine = [m for m in seen if m.request_id == "open-0" and not m.end]
    assert mine[0].nodes.groups == () and mine[0].context is not None
    assert any(m.nodes.groups for m in mine[1:])


async def test_two_verifiers_in_the_queue_group_serve_every_request_exactly(broker, pair, tmp_path, monkeypatch):
    """With no verifier heard yet (the queue group picks), the opening ping and the root's expansion
    may land on different verifiers; only a verdict that commits something may pin the request, or it
    could be pinned to a verifier whose session never saw a group, every later message stale there
    until the deadline."""
    monkeypatch.setattr(edge_stream_module, "_first_verifier", lambda worker: None)
    prompts = _prompts(6)
    async with cluster(broker.url, pair, tmp_path, channel="const:20", clouds=2, stream_tree=StreamShape()) as (
            client, _, _):
        results = [await generate_stream(client, GenerateRequest(f"two-{i}", prompt=p, max_new_tokens=16), 20)
                   for i, p in enumerate(prompts)]
    refs = [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), 16).token_ids
            for p in prompts]
    for i, (res, ref) in enumerate(zip(results, refs)):
        assert res.ok, f"prompt {i}: {res.error}"
        assert res.token_ids == ref, f"prompt {i}: two verifiers changed the output"
    opened = [e for c in ("cloud-1", "cloud-2") for e in read_log(tmp_path / f"{c}.jsonl")
              if e["event"] == "stream_opened"]
    assert {e["node"] for e in opened} == {"cloud-1", "cloud-2"}  # both verifiers took part


async def test_a_stream_request_goes_to_one_heard_verifier_from_its_first_message(broker, pair, tmp_path):
    """Groups sent before the first verdict must not be split by the queue group (one lost there costs
    a stall and a resend): with both verifiers heard, each request's session opens on one of them only."""
    prompts = _prompts(4)
    async with cluster(broker.url, pair, tmp_path, channel="const:20", clouds=2, stream_tree=StreamShape()) as (
            client, edge, _):
        p = edge.placement
        await wait_for(lambda: len(p.peers.usable(time.monotonic(), p.since)) == 2, 15.0)
        results = [await generate_stream(client, GenerateRequest(f"one-{i}", prompt=q, max_new_tokens=16), 20)
                   for i, q in enumerate(prompts)]
    assert all(r.ok for r in results), [r.error for r in results]
    refs = [target_only_generate(pair, pair.tokenizer.encode(q, add_special_tokens=False), 16).token_ids
            for q in prompts]
    assert [r.token_ids for r in results] == refs
    opened: dict[str, set[str]] = {}
    for c in ("cloud-1", "cloud-2"):
        for e in read_log(tmp_path / f"{c}.jsonl"):
            if e["event"] == "stream_opened":
                opened.setdefault(e["request_id"], set()).add(e["node"])
    assert sorted(opened) == [f"one-{i}" for i in range(4)]
    assert all(len(nodes) == 1 for nodes in opened.values()), opened
