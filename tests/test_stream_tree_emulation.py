"""Device emulation reaches the stream tree: each draft forward takes the edge device's time for one
drafting step and each target forward the cloud device's for its new positions (nodes/device.py),
in-process and through the real workers, and the output stays the target's."""
from __future__ import annotations

from nodes.config import StreamShape
from nodes.device import DeviceProfile, Pacer
from nodes.models.stream_tree import stream_tree_generate
from pipeline.transport.client import generate_stream
from schemas.messages import GenerateRequest
from tests.pipeline_fixtures import cluster, read_log
from tests.test_pipelined import TEXTS, encode, target_only
from tests.test_stream_tree_workers import NEW, _prompts, _refs

EDGE = DeviceProfile("slow-edge", draft_ms_fixed=5.0, draft_ms_per_token=25.0)      # 30 ms per drafting step
CLOUD = DeviceProfile("slow-cloud", verify_ms_fixed=20.0, verify_ms_per_token=1.0)  # 20 ms + 1 ms per position
SLACK_MS = 1.0
# Each forward reports max(the device's time, this machine's): a busy machine can only add, and only
# on the forwards it made overrun, by at most what they really took. So the checks below are exact
# when nothing overran and bounded by the real time when something did; load cannot fail them.


def spill(real_ms: float, overruns: int) -> float:
    """What overrunning forwards can add above the device's time: at most their real time."""
    return real_ms if overruns else 0.0


def test_each_draft_forward_takes_the_edge_devices_step_time(pair):
    prompt = encode(pair, TEXTS[0])
    got = stream_tree_generate(pair, prompt, 16, one_way_ms=2.0, edge_pacer=Pacer(EDGE))
    assert got.token_ids == target_only(pair, prompt, 16)
    assert got.draft_forwards > 0
    step = 30.0 * got.draft_forwards  # one step per batched forward (not per node), no jitter
    assert step - 1e-6 <= got.draft_ms <= step + spill(got.draft_real_ms, got.draft_overruns) + 1e-6
    assert got.wall_s * 1e3 >= got.draft_ms - SLACK_MS  # the device's time was spent, not only reported


def test_each_target_forward_takes_the_cloud_devices_time_for_its_new_positions(pair):
    prompt = encode(pair, TEXTS[1])
    got = stream_tree_generate(pair, prompt, 16, one_way_ms=2.0, cloud_pacer=Pacer(CLOUD))
    assert got.token_ids == target_only(pair, prompt, 16)
    paced = got.verify_forwards - 1  # the root's forward is the prefill's last position: not emulated
    # every paced forward costs 20 ms plus 1 ms per position it fed: the nodes verified, and after a
    # miss the target's own token (one position, at most one per forward); the root's forward counts
    # its real time, a part of verify_real_ms, as does any overrun's spill
    floor = 20.0 * paced + got.nodes_verified
    assert paced > 0
    assert floor <= got.verify_ms <= floor + paced + got.verify_real_ms


def test_without_a_device_the_times_are_this_machines(pair):
    got = stream_tree_generate(pair, encode(pair, TEXTS[2]), 8, one_way_ms=0.0)
    assert got.draft_ms == got.draft_real_ms and got.verify_ms == got.verify_real_ms
    assert got.draft_overruns == got.verify_overruns == 0


async def test_the_workers_pad_the_stream_tree_to_both_emulated_devices(broker, pair, tmp_path):
    prompts = _prompts(1)
    async with cluster(broker.url, pair, tmp_path, channel="const:5", stream_tree=StreamShape(),
                       edge_device=EDGE, cloud_device=CLOUD) as (client, _, _):
        res = await generate_stream(client, GenerateRequest("emu-0", prompt=prompts[0], max_new_tokens=NEW), 60)
    assert res.ok, res.error
    assert res.token_ids == _refs(pair, prompts)[0]
    done = next(e for e in read_log(tmp_path / "edge-1.jsonl") if e["event"] == "stream_done")
    step = 30.0 * done["draft_forwards"]
    assert done["draft_forwards"] > 0
    assert step - 0.01 <= done["draft_ms"] <= step + spill(done["draft_real_ms"], done["draft_overruns"]) + 0.01
    assert done["wall_ms"] >= done["draft_ms"] - SLACK_MS
    end = next(e for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "session_end" and e.get("stream_tree"))
    paced = end["verify_forwards"] - 1
    floor = 20.0 * paced + end["nodes_verified"]
    assert paced > 0
    assert floor - 0.01 <= end["verify_ms"] <= floor + paced + end["verify_real_ms"] + 0.01  # the root's: real


SLOW_STEP = DeviceProfile("slow-step-edge", draft_ms_fixed=1000.0, draft_ms_per_token=0.0)  # 1 s per step


async def test_a_verdict_reaches_the_client_while_the_edge_is_in_a_draft_forward(broker, pair, tmp_path):
    """Over a 0 ms link the first verdict lands early in the edge's second 1 s draft step (the one
    proposing the second token): the client has its tokens then, ~1 s before the edge thread is free to
    take the verdict (its log line). The client's clock starts before the edge's (routing, the draft's
    prefill), so load can only narrow the gap, and by much less than the 300 ms asked."""
    prompts = _prompts(1)
    async with cluster(broker.url, pair, tmp_path, channel="const:0", stream_tree=StreamShape(),
                       edge_device=SLOW_STEP) as (client, _, _):
        res = await generate_stream(client, GenerateRequest("early-0", prompt=prompts[0], max_new_tokens=2), 60)
    assert res.ok, res.error
    assert res.token_ids == _refs(pair, prompts)[0][:2]
    first = next(e for e in read_log(tmp_path / "edge-1.jsonl")
                 if e["event"] == "stream_verdict" and e["request_id"] == "early-0")
    assert first["draft_forwards"] == 2  # the edge thread took it after its second forward
    assert res.chunk_times_s[0] * 1e3 < first["elapsed_ms"] - 300.0
