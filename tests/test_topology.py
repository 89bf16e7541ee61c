"""The real leaf/hub topology from deploy/ on loopback (TLS on, nkeys, per-role permissions), with real
worker processes: 2 edges on their own leaf nodes x 2 verifiers and the controller on the hub. Every
greedy output equals target-only decoding, both verifiers take rounds, the controller's policy updates
reach the edges through their leaves, and timing events reach the hub's stream."""
from __future__ import annotations

import pytest

from nodes.speculative import target_only_generate
from pipeline.topology.run import Topology
from pipeline.topology.workload import drive, read_rounds, start_workers, summarize


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
