"""The control subscriber over a real nats-server with JetStream on loopback."""
from __future__ import annotations

import asyncio

import msgpack
import pytest

from control import RoundContext, RoundOutcome, make_policy
from pipeline.transport.confirm import confirm_sent
from pipeline.transport.jetstream import ensure_stream
from nodes.protocol.timing import outcome_of
from pipeline.transport import bus
from pipeline.transport.client import generate_stream
from schemas import subjects
from schemas.codec import encode
from schemas.messages import GenerateRequest, PolicyUpdate, TimingEvent
from tests.pipeline_fixtures import cluster, read_log, reset_jetstream, start_controller, wait_for
from tests.waiting import eventually


async def _drained(nc):
    """The controller's consumer info once nothing is pending or awaiting an ack, else None."""
    info = await nc.jetstream().consumer_info(subjects.TIMING_STREAM, subjects.CONTROL_DURABLE)
    return info if info.num_pending == 0 and info.num_ack_pending == 0 else None


@pytest.fixture(autouse=True)
async def clean_jetstream(broker):
    await reset_jetstream(broker.url)
    yield


def long_draft_snapshot() -> dict:
    """An auto policy that has seen long drafts fully accepted at a large delay (and the leader's
    neighbour a few times, as auto plays it before trusting the leader)."""
    p = make_policy("auto", max_length=8)
    for L in [8] * 200 + [7] * 5:
        p.observe(RoundOutcome(L, L, 30.0 + 2 * 100.0, RoundContext(100.0)))
    return p.snapshot()




async def test_published_update_changes_the_lengths_an_edge_chooses(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, channel="const:1", local_policy=False) as (client, edge, _):
        req = lambda rid: GenerateRequest(rid, prompt="The for statement", max_new_tokens=40, policy="auto")
        await generate_stream(client, req("before"), 30)
        await client.publish(subjects.policy("edge-1"), encode(PolicyUpdate("edge-1", "auto", 7, long_draft_snapshot())))
        await wait_for(lambda: edge.policies.versions.get("auto") == 7)
        await generate_stream(client, req("after"), 30)
    rounds = [e for e in read_log(tmp_path / "edge-1.jsonl") if e["event"] == "round"]
    before = {r["draft_length"] for r in rounds if r["request_id"] == "before"}
    after = [r for r in rounds if r["request_id"] == "after"]
    assert {r["policy_version"] for r in rounds if r["request_id"] == "before"} == {0}
    assert {r["policy_version"] for r in after} == {7}
    after.sort(key=lambda r: r["round"])
    done = [sum(r["tokens"] for r in after[:i]) for i in range(len(after))]
    # the longest draft, except where the 40-token budget needs fewer (tokens to go - 1)
    assert [r["draft_length"] for r in after] == [min(8, 40 - n - 1) for n in done] and before != {8}


async def publish_events(url: str, n: int, edge_id: str = "edge-z", start: int = 0,
                         told_delay_ms: float | None = None) -> list[TimingEvent]:
    nc = await bus.connect(url, "events", long_lived=False)
    await ensure_stream(nc.jetstream())
    evs = []
    for i in range(start, start + n):
        L = 1 + i % 8
        a = (i * 7) % (L + 1)
        ev = TimingEvent(edge_id, f"r{i // 10}", i % 10, 0, L, a, 20.0 + 3 * L + 2 * (5 + i % 3), 3.0 * L, 20.0,
                         0.1, 2 * (5 + i % 3), 5.0, "auto", 0, "cloud-1", None, i + 1, a + 1,
                         told_delay_ms=told_delay_ms)
        evs.append(ev)
        await nc.jetstream().publish(subjects.timing(edge_id), encode(ev))
    await nc.close()
    return evs


def reference_state(evs: list[TimingEvent]) -> dict:
    p = make_policy("auto", max_length=8)
    for ev in evs:  # what the controller learns from an event, by the one rule it uses (nodes/protocol/timing.py)
        p.observe(outcome_of(ev))
    return p.snapshot()


async def test_restarted_controller_resumes_from_the_bucket(broker, tmp_path):
    evs = await publish_events(broker.url, 150)
    nc, ctl = await start_controller(broker.url, tmp_path, batch=50)
    await wait_for(lambda: ctl.applied >= 50)
    await ctl.stop()
    first_run = ctl.applied
    before = ctl.learners[("edge-z", "auto")].policy.snapshot()
    await nc.close()
    assert 50 <= first_run < 150 or first_run == 150

    nc2, ctl2 = await start_controller(broker.url, tmp_path, node_id="control-2", batch=50)
    restored = ctl2.learners[("edge-z", "auto")]
    assert restored.policy.snapshot() == before  # estimates equal before and after the restart
    evs += await publish_events(broker.url, 50, start=150)
    await wait_for(lambda: restored.version == 200)
    # every event delivered and acked: nothing is left that could be applied a second time
    await eventually(lambda: _drained(nc2), what="the durable consumer has nothing pending or unacked")
    await ctl2.stop()
    await nc2.close()
    assert first_run + ctl2.applied == 200  # none applied twice, none lost
    assert restored.version == 200 and restored.policy.snapshot() == reference_state(evs)


async def test_the_controller_learns_how_much_longer_the_paid_delay_is_than_the_told_one(broker, tmp_path):
    evs = await publish_events(broker.url, 60, told_delay_ms=2.0)  # each round paid 5-7 ms one way
    nc, ctl = await start_controller(broker.url, tmp_path, batch=60)
    await wait_for(lambda: ctl.applied >= 60)
    await ctl.stop()
    await nc.close()
    learner = ctl.learners[("edge-z", "auto")].policy
    assert learner.delay_bias() == pytest.approx(3.95, abs=0.5)  # paid ~5.95 on average, told 2
    assert learner.snapshot() == reference_state(evs)


@pytest.mark.slow
async def test_two_edges_with_different_channels_learn_different_lengths(broker, tmp_path):
    """Separate processes (as deployed): one controller, one verifier, an edge at 0 ms and one
    at 250 ms one-way. Up to 16 draft tokens: the bundled pair's best length is ~7 near zero
    delay and keeps growing with the delay."""
    from pipeline.orchestration.local import RunConfig, start_cluster

    cfg = RunConfig(max_length=16, local_policy=False, policy="auto")
    nodes = await asyncio.to_thread(start_cluster, broker.url, tmp_path, cfg, 2, 1, ["const:0", "const:250"])
    client = await bus.connect(broker.url, "client", long_lived=False)
    try:
        async def load(edge_id: str, n: int, tokens: int):
            for i in range(n):
                req = GenerateRequest(f"{edge_id}-{i}", prompt=f"The {i} statement", max_new_tokens=tokens,
                                      policy="auto")
                reply = client.new_inbox()
                sub = await client.subscribe(reply)
                await client.publish(subjects.generate(edge_id), encode(req), reply=reply)
                while True:
                    body = msgpack.unpackb((await sub.next_msg(timeout=60)).data)
                    assert body["t"] != "error", body
                    if body["done"]:
                        break
                await sub.unsubscribe()

        await asyncio.gather(load("edge-1", 6, 96), load("edge-2", 2, 160))
    finally:
        await client.close()
        for n in nodes:
            n.stop()
    lengths = {}
    for e in ("edge-1", "edge-2"):
        rounds = [r for r in read_log(tmp_path / f"{e}.jsonl") if r["event"] == "round"]
        late = [r["draft_length"] for r in rounds if r["policy_version"] > 10]
        assert late, f"{e} never acted on a controller update"
        lengths[e] = sum(late[-25:]) / len(late[-25:])
    assert lengths["edge-2"] > lengths["edge-1"] + 2.0, lengths


async def test_malformed_events_are_acked_logged_and_skipped(broker, tmp_path):
    nc = await bus.connect(broker.url, "bad-events", long_lived=False)
    await ensure_stream(nc.jetstream())
    await nc.jetstream().publish(subjects.timing("edge-q"), b"\x93garbage")
    await nc.jetstream().publish(subjects.timing("edge-q"), msgpack.packb({"v": 1, "t": "timing"}))
    await nc.close()
    await publish_events(broker.url, 5, edge_id="edge-q")
    cnc, ctl = await start_controller(broker.url, tmp_path)
    await wait_for(lambda: ctl.applied == 5 and ctl.malformed == 2)
    info = await eventually(lambda: _drained(cnc), what="every event, the malformed ones too, acked")
    await ctl.stop()
    await cnc.close()
    assert info.num_ack_pending == 0 and info.num_redelivered == 0 and ctl.malformed == 2
    bad = [e for e in read_log(tmp_path / "control-1.jsonl") if e["event"] == "bad_event"]
    assert len(bad) == 2 and all(e["error"] for e in bad)


@pytest.mark.parametrize("snapshot_patch, fragment", [
    ({"format": 99}, "unsupported format 99"),
    ({"spec": "mystery"}, "is for policy 'mystery'"),
])
async def test_snapshot_of_unknown_or_newer_version_is_refused(broker, pair, tmp_path, snapshot_patch, fragment):
    async with cluster(broker.url, pair, tmp_path, local_policy=False) as (client, edge, _):
        good = PolicyUpdate("edge-1", "auto", 3, long_draft_snapshot())
        await client.publish(subjects.policy("edge-1"), encode(good))
        await wait_for(lambda: edge.policies.versions.get("auto") == 3)
        bad = PolicyUpdate("edge-1", "auto", 4, long_draft_snapshot() | snapshot_patch)
        await client.publish(subjects.policy("edge-1"), encode(bad))
        await confirm_sent(client, 10.0)
        # the edge has handled the bad update (its refusal is logged) before we look at what it kept
        await eventually(lambda: any(e["event"] == "policy_update_refused"
                                     for e in read_log(tmp_path / "edge-1.jsonl")), what="policy_update_refused logged")
        assert edge.policies.versions["auto"] == 3
        assert edge.policies.get("auto").snapshot() == good.snapshot
    refused = [e for e in read_log(tmp_path / "edge-1.jsonl") if e["event"] == "policy_update_refused"]
    assert refused and fragment in refused[0]["error"]


async def test_an_event_naming_another_edge_than_its_subject_is_not_learned(broker, tmp_path):
    nc = await bus.connect(broker.url, "forger", long_lived=False)
    await ensure_stream(nc.jetstream())
    ev = TimingEvent("edge-victim", "r", 0, 0, 4, 4, 30.0, 5.0, 4.0, 0.1, 20.9, 10.0, "auto", 0, "cloud-1", None, 1, 5)
    await nc.jetstream().publish(subjects.timing("edge-forger"), encode(ev))
    await nc.close()
    cnc, ctl = await start_controller(broker.url, tmp_path)
    await wait_for(lambda: ctl.malformed == 1)
    await ctl.stop()
    await cnc.close()
    assert not ctl.learners and ctl.applied == 0
    bad = [e for e in read_log(tmp_path / "control-1.jsonl") if e["event"] == "bad_event"]
    assert "names edge 'edge-victim' but arrived on specstop.timing.edge-forger" in bad[0]["error"]


async def test_a_bad_snapshot_in_the_bucket_is_refused_at_restore_and_the_controller_keeps_learning(broker, tmp_path):
    from pipeline.transport.jetstream import policy_bucket

    nc = await bus.connect(broker.url, "vandal", long_lived=False)
    kv = await policy_bucket(nc.jetstream())
    snap = make_policy("auto", max_length=8).snapshot()
    snap["state"]["arm_n"] = [-3.0] * 8
    await kv.put(subjects.policy_key("edge-z", "auto"), encode(PolicyUpdate("edge-z", "auto", 9, snap)))
    await nc.close()
    evs = await publish_events(broker.url, 10)
    cnc, ctl = await start_controller(broker.url, tmp_path)
    await wait_for(lambda: ctl.applied == 10)
    await ctl.stop()
    await cnc.close()
    learner = ctl.learners[("edge-z", "auto")]
    assert learner.version == 10 and learner.policy.snapshot() == reference_state(evs)  # started fresh
    refused = [e for e in read_log(tmp_path / "control-1.jsonl") if e["event"] == "snapshot_refused"]
    assert refused and "arm_n" in refused[0]["error"]


async def test_the_controller_recreates_its_stream_and_consumer_when_they_vanish(broker, tmp_path):
    cnc, ctl = await start_controller(broker.url, tmp_path)
    await publish_events(broker.url, 5)
    await wait_for(lambda: ctl.applied == 5)
    await reset_jetstream(broker.url)  # as a broker restarted on an empty store would leave it
    await wait_for(lambda: ctl.recoveries >= 1)
    await publish_events(broker.url, 5, start=5)
    await wait_for(lambda: ctl.applied == 10)
    await ctl.stop()
    await cnc.close()


async def test_learners_beyond_the_cap_wait_in_the_bucket_and_resume_from_it(broker, tmp_path):
    cnc, ctl = await start_controller(broker.url, tmp_path)
    ctl.max_learners = 2
    for edge in ("edge-a", "edge-b", "edge-c"):
        await publish_events(broker.url, 4, edge_id=edge)
        await wait_for(lambda: ctl.applied % 4 == 0 and (edge, "auto") in ctl.learners)
    assert len(ctl.learners) == 2 and ("edge-a", "auto") not in ctl.learners and ctl.evicted == 1
    await publish_events(broker.url, 4, edge_id="edge-a", start=4)
    await wait_for(lambda: ctl.learners.get(("edge-a", "auto")) and ctl.learners[("edge-a", "auto")].version == 8)
    await ctl.stop()
    await cnc.close()


async def test_the_controller_stops_with_its_batch_acked(broker, tmp_path):
    await publish_events(broker.url, 50)
    cnc, ctl = await start_controller(broker.url, tmp_path, batch=10)
    await wait_for(lambda: ctl.applied >= 10)
    await ctl.stop()
    info = await cnc.jetstream().consumer_info(subjects.TIMING_STREAM, subjects.CONTROL_DURABLE)
    await cnc.close()
    assert ctl.task.done() and info.num_ack_pending == 0 and info.delivered.stream_seq == ctl.applied


async def test_an_event_with_an_id_no_bucket_key_can_hold_is_skipped_and_learning_goes_on(broker, tmp_path):
    nc = await bus.connect(broker.url, "odd", long_lived=False)
    await ensure_stream(nc.jetstream())
    body = msgpack.unpackb(encode(TimingEvent("edge-z", "r", 0, 0, 4, 4, 30.0, 5.0, 4.0, 0.1, 20.9, 10.0, "auto", 0,
                                              "cloud-1", None, 1, 5)))
    body["edge_id"] = "e@1"
    await nc.jetstream().publish("specstop.timing.e@1", msgpack.packb(body))
    await nc.close()
    await publish_events(broker.url, 5)
    cnc, ctl = await start_controller(broker.url, tmp_path)
    await wait_for(lambda: ctl.applied == 5 and ctl.malformed == 1)
    await ctl.stop()
    await cnc.close()


def tree_event(i: int, nodes: int, depth: int, path: int, edge_id: str = "edge-z") -> TimingEvent:
    """A tree round's event: `nodes` drafted to `depth`, a path of `path` accepted (round 130 ms)."""
    return TimingEvent(edge_id, f"t{i}", 0, 0, nodes, path, 130.0, 12.0, 9.0, 0.1, 108.9, 50.0, "auto", 0,
                       "cloud-1", None, 1000 + i, path + 1, tree_depth=depth)


async def test_tree_rounds_are_not_learned_as_chains_of_their_node_count_and_the_skip_is_logged(broker, tmp_path):
    chains = await publish_events(broker.url, 20)
    nc = await bus.connect(broker.url, "tree-events", long_lived=False)
    # 24 nodes of an 8x3 tree is past the controller's 8-token chains: still a valid event, not malformed
    for i, (nodes, depth, path) in enumerate([(24, 8, 5), (6, 3, 3), (24, 8, 0)]):
        await nc.jetstream().publish(subjects.timing("edge-z"), encode(tree_event(i, nodes, depth, path)))
    await nc.close()
    chains += await publish_events(broker.url, 20, start=20)
    cnc, ctl = await start_controller(broker.url, tmp_path)
    await eventually(lambda: _drained(cnc), what="every event, the tree rounds' too, acked")
    await ctl.stop()
    await cnc.close()
    assert (ctl.applied, ctl.skipped_trees, ctl.malformed) == (40, 3, 0)
    assert ctl.learners[("edge-z", "auto")].policy.snapshot() == reference_state(chains)  # the chains' alone
    skipped = [e for e in read_log(tmp_path / "control-1.jsonl") if e["event"] == "tree_rounds_skipped"]
    assert len(skipped) == 1 and skipped[0]["edge_id"] == "edge-z" and "not a chain" in skipped[0]["reason"]


async def test_an_edge_drafting_trees_marks_its_rounds_so_the_controller_learns_no_chain_from_them(broker, pair,
                                                                                                  tmp_path):
    cnc, ctl = await start_controller(broker.url, tmp_path)
    async with cluster(broker.url, pair, tmp_path, local_policy=False, tree="3x2") as (client, edge, _):
        res = await generate_stream(client, GenerateRequest("t", prompt="The for statement", max_new_tokens=24,
                                                            policy="auto"), 30)
        assert res.ok
        rounds = [e for e in read_log(tmp_path / "edge-1.jsonl") if e["event"] == "round"]
        trees = [r for r in rounds if r.get("tree_depth") is not None]
        # a last round that only takes the target's own token drafts nothing: a chain round of 0
        await wait_for(lambda: ctl.skipped_trees == len(trees) and ctl.applied == len(rounds) - len(trees))
    await ctl.stop()
    await cnc.close()
    assert trees and all(r["tree_depth"] == r["draft_length"] // 2 for r in trees)  # spines of width 2
    assert all(r["draft_length"] == 0 for r in rounds if r.get("tree_depth") is None)
