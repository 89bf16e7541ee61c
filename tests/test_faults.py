"""Each fault of `specstop chaos`, over a real nats-server with the workers as separate processes.

One cluster serves the module (each fault leaves it serving again); every
test runs a concurrent greedy workload across its fault and checks every
completed output against target-only decoding. Nothing here asserts a time:
a loaded machine may be slow, never wrong.
"""
from __future__ import annotations

import pytest

from nodes.speculative import target_only_generate
from pipeline.chaos.faults import ChaosCluster, ChaosConfig
from pipeline.chaos.run import _one_fault
from pipeline.orchestration.workload import workload_prompts

pytestmark = pytest.mark.slow

CFG = ChaosConfig(requests=8, concurrency=4, max_new_tokens=32, request_timeout_s=1.5, failover_deadline_s=20.0,
                  stall_s=4.0, replacement_delay_s=2.0, outage_s=1.0, fuzz_count=10000, inject_after_s=0.5)


@pytest.fixture(scope="module")
def chaos_cluster(tmp_path_factory, pair):
    prompts = workload_prompts(CFG.requests)
    refs = [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), CFG.max_new_tokens).token_ids
            for p in prompts]
    cl = ChaosCluster(tmp_path_factory.mktemp("chaos"), CFG)
    cl.start()
    yield cl, prompts, refs
    cl.stop()


async def run(chaos_cluster, fault: str) -> dict:
    cl, prompts, refs = chaos_cluster
    return await _one_fault(fault, cl, CFG, prompts, refs)


def assert_every_request_completes_exactly(row: dict) -> None:
    assert row["completed"] == row["requests"], row["errors"]
    assert row["outputs_differing"] == 0 and row["stream_tokens_lost"] == 0 and row["stream_tokens_retracted"] == 0
    assert all(row["workers_alive_after"].values()), row["workers_alive_after"]


async def test_ten_thousand_fuzzed_messages_per_subject_each_get_exactly_one_reply_and_change_no_output(chaos_cluster):
    row = await run(chaos_cluster, "garbage")
    assert_every_request_completes_exactly(row)
    assert len(row["subjects"]) == 9 and all(s["sent"] == 10000 for s in row["subjects"])
    for s in row["subjects"]:
        assert s["exactly_one_reply"] == s["with_reply"] and s["more_than_one_reply"] == 0, s
    assert all(row["workers_alive"].values())


async def test_a_controller_killed_and_restarted_resumes_publishing_updates(chaos_cluster):
    row = await run(chaos_cluster, "controller-kill")
    assert_every_request_completes_exactly(row)
    assert row["first_update_after_restart_s"] is not None


async def test_a_verifier_stalled_past_the_edges_timeout_corrupts_no_output(chaos_cluster):
    assert_every_request_completes_exactly(await run(chaos_cluster, "verifier-stall"))


async def test_a_killed_verifier_is_waited_for_and_its_replacement_finishes_every_request(chaos_cluster):
    assert_every_request_completes_exactly(await run(chaos_cluster, "verifier-kill"))


async def test_with_no_verifier_past_the_deadline_requests_fail_with_a_clear_error(chaos_cluster):
    row = await run(chaos_cluster, "verifier-gone")
    assert row["failed_clear"] > 0 and row["failed_unclear"] == 0 and row["outputs_differing"] == 0
    assert any("no_verifier" in e and "no responders" in e for e in row["errors"])


async def test_a_broker_killed_and_restarted_loses_no_request_and_no_token(chaos_cluster):
    assert_every_request_completes_exactly(await run(chaos_cluster, "broker-kill"))


async def test_an_edge_stopped_with_sigterm_finishes_its_requests_and_exits(chaos_cluster):
    row = await run(chaos_cluster, "edge-term")
    assert_every_request_completes_exactly(row)
    assert row["old_edge_exited"] and row["old_edge_exit_code"] == 0
