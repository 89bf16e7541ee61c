"""The real leaf/hub topology from deploy/ on loopback (TLS on, nkeys, per-role permissions), with real
worker processes: 2 edges on their own leaf nodes x 2 verifiers and the controller on the hub. Every
greedy output equals target-only decoding, both verifiers take rounds, the controller's policy updates
reach the edges through their leaves, and timing events reach the hub's stream."""
from __future__ import annotations

import pytest

from nodes.speculative import target_only_generate
from pipeline.topology.run import Topology
from pipeline.topology.workload import drive, read_rounds, start_workers, summarize
from tests.waiting import eventually


@pytest.mark.slow
async def test_two_edges_on_leaves_two_verifiers_greedy_equals_target_only(pair, tmp_path):
    with Topology(tmp_path / "topo", 2, 2) as topo:
        workers = start_workers(topo, tmp_path / "run", policy="auto")
        try:
            results, wall, prompts = await drive(topo, per_edge=4, max_new_tokens=32, concurrency=2)
            for e, rs in results.items():
                for r, p in zip(rs, prompts[e]):
                    assert r.ok, f"{e}: {r.error_code} {r.error}"
                    ref = target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), 32)
                    assert r.token_ids == ref.token_ids, f"{e}: {r.request_id} differs from target-only"
            rounds = [x for e in topo.edges for x in read_rounds(tmp_path / "run" / f"{e}.jsonl")]
            s = summarize(results, wall, rounds)
            assert set(s["per_verifier_rounds"]) == {"cloud-1", "cloud-2"}, s["per_verifier_rounds"]
            ctl = (tmp_path / "run" / "control-1.jsonl").read_text()
            assert '"updates_published"' in ctl  # timing events crossed the leaves into the hub's stream
            edge_logs = "".join((tmp_path / "run" / f"{e}.jsonl").read_text() for e in topo.edges)
            assert '"event": "policy_update"' in edge_logs  # ...and the controller's updates came back
            assert "violation" not in (edge_logs + ctl).lower(), "a worker needed a subject its role lacks"
        finally:
            workers.stop()


async def _timing_in_stream(topo, edge: str) -> int:
    from pipeline.transport import bus

    nc = await bus.connect(topo.hub_url(), "ops", long_lived=False, auth=topo.auth("operator", "ops"))
    try:
        info = await nc.jetstream().stream_info("SPECSTOP_TIMING", subjects_filter=f"specstop.timing.{edge}")
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


async def _at_least(topo, edge: str, n: int) -> int | None:
    got = await _timing_in_stream(topo, edge)
    return got if got >= n else None


async def _drive_with_cut(topo, seconds: float, per_edge: int = 16):
    """A workload whose requests are mid-generation when the link goes (they take seconds in all)."""
    import asyncio

    task = asyncio.create_task(drive(topo, per_edge=per_edge, max_new_tokens=48, concurrency=2, timeout_s=90.0))
    await asyncio.sleep(0.5)
    topo.cut_link("edge-1")
    await asyncio.sleep(seconds)
    topo.restore_link("edge-1")
    return await task


@pytest.mark.slow
async def test_a_cut_leaf_link_delays_requests_or_fails_them_naming_the_link_and_loses_no_timing(pair, tmp_path):
    import asyncio

    with Topology(tmp_path / "topo", ["edge-1"], ["cloud-1"], proxied_links=True) as topo:
        workers = start_workers(topo, tmp_path / "run", policy="fixed:4",
                                edge_extra=["--failover-deadline", "8"])
        try:
            # a cut shorter than the failover deadline: every request waits, then completes, exactly
            results, _, prompts = await _drive_with_cut(topo, 4.0)
            retried = sum('"round_retry"' in line for line in (tmp_path / "run" / "edge-1.jsonl").open())
            assert retried, "the cut caught no round in flight"
            for r, p in zip(results["edge-1"], prompts["edge-1"]):
                assert r.ok, f"{r.error_code} {r.error}"
                ref = target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), 48)
                assert r.token_ids == ref.token_ids
            # a cut longer than it: the requests caught by it fail with an error that names the link
            results, _, _ = await _drive_with_cut(topo, 14.0)
            failed = [r for r in results["edge-1"] if not r.ok]
            assert failed, "a 14 s cut with an 8 s failover deadline failed no request"
            assert all(r.error_code == "no_verifier" and "leaf node's link to the hub" in r.error for r in failed), \
                [r.error for r in failed]
            rounds = read_rounds(tmp_path / "run" / "edge-1.jsonl")
            # the outbox empties once the link is back: wait for every round's event, then ask for exactly that many
            stored = await eventually(lambda: _at_least(topo, "edge-1", len(rounds)), timeout=60,
                                      what=f"{len(rounds)} timing events in the hub's stream")
            assert stored == len(rounds)  # no timing event lost or doubled
        finally:
            workers.stop()
