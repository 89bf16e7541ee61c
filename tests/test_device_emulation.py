"""Device emulation: real tokens on the emulated devices' clock."""
from __future__ import annotations

import json

import pytest

from nodes.device import DeviceError, Pacer, load_device, shipped_devices
from nodes.speculative import target_only_generate
from pipeline.transport.client import generate_stream
from schemas.messages import GenerateRequest
from tests.pipeline_fixtures import cluster, read_log


def test_the_shipped_profiles_load_and_state_their_provenance():
    assert {"jetson-orin-nano", "rtx-3090-ti", "as-is"} <= set(shipped_devices())
    for name in shipped_devices():
        d = load_device(name)
        assert d.provenance and (d.emulates_draft or d.emulates_verify)


def test_the_paper_testbed_pair_costs_139_ms_at_one_token_and_72_more_per_token():
    edge, cloud = load_device("jetson-orin-nano"), load_device("rtx-3090-ti")
    c = [edge.draft_ms(L) + cloud.verify_ms(L) for L in (1, 2, 3)]
    assert c[0] == pytest.approx(139.0) and c[1] - c[0] == pytest.approx(72.0) and c[2] - c[1] == pytest.approx(72.0)


@pytest.mark.parametrize("body, fragment", [
    ({"draft_ms_per_token": -1}, "must be a number >= 0"),
    ({"draft_ms_per_token": "fast"}, "must be a number >= 0"),
    ({"verify_ms_per_token": 3}, "needs 'verify_ms_fixed'"),
    ({"jitter": 0.1}, "needs 'draft_ms_per_token' (edge) or 'verify_ms_fixed' (cloud)"),
    ({"draft_ms_per_token": 1, "jitter": 1.5}, "'jitter' must be below 1"),
    ({"verify_ms_fixed": 60, "shared": "yes"}, "'shared' must be true or false"),
    ({"draft_ms_per_token": 60, "shared": True}, "'shared' needs verify times"),
])
def test_a_bad_profile_is_one_clear_error(tmp_path, body, fragment):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(body))
    with pytest.raises(DeviceError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_device(str(path))


def test_an_unknown_profile_names_the_shipped_ones():
    with pytest.raises(DeviceError, match="jetson-orin-nano"):
        load_device("pdp-11")


def test_the_pacer_pads_up_to_the_device_time_and_never_below_the_real_one():
    pacer = Pacer(load_device("as-is"))
    assert pacer.draft(3, 1.5) == (1.5, 0.0)
    jetson = Pacer(load_device("jetson-orin-nano"), seed=1)
    emulated, pad = jetson.draft(2, 5.0)
    assert 142 * 0.95 <= emulated <= 142 * 1.05 and pad == pytest.approx(emulated - 5.0)
    assert jetson.draft(2, 500.0) == (500.0, 0.0)  # slower than the device: nothing to add


def test_jitter_is_seeded():
    a, b = Pacer(load_device("rtx-3090-ti"), seed=4), Pacer(load_device("rtx-3090-ti"), seed=4)
    assert [a.verify(3, 1.0) for _ in range(5)] == [b.verify(3, 1.0) for _ in range(5)]


async def test_an_emulated_pipeline_keeps_the_tokens_and_takes_the_devices_time(broker, pair, tmp_path):
    prompt = "The pass statement"
    ref = target_only_generate(pair, pair.tokenizer.encode(prompt, add_special_tokens=False), 12)
    async with cluster(broker.url, pair, tmp_path, channel="const:5", edge_device=load_device("jetson-orin-nano"),
                       cloud_device=load_device("rtx-3090-ti")) as (client, edge, clouds):
        res = await generate_stream(client, GenerateRequest("emu", prompt=prompt, max_new_tokens=12,
                                                            policy="fixed:2"), 60)
    assert res.ok and res.token_ids == ref.token_ids
    rounds = [e for e in read_log(tmp_path / "edge-1.jsonl") if e["event"] == "round"]
    for r in rounds:
        L = r["draft_length"]
        if L == 0:  # the request's last token: a target-only round, nothing drafted
            assert r["draft_ms"] == 0
        else:
            assert r["emulated"] and r["draft_ms"] >= 0.95 * (4 + 69 * L) > r["draft_real_ms"]
        assert r["verify_ms"] >= 0.95 * (60 + 3 * (L + 1)) and r["verify_real_ms"] < r["verify_ms"]
        assert r["round_ms"] >= r["draft_ms"] + r["verify_ms"] + 2 * 5.0 - 4.5  # the link timer may ask 2 ms less a way


async def test_a_shared_cloud_device_verifies_one_batch_at_a_time(broker, pair, tmp_path):
    """`shared`: one device for every session, so two streams' rounds queue for it (one round per batch
    here) instead of each having a device of its own; the tokens stay the target's."""
    import asyncio

    prompts = ["The pass statement", "The return statement"]
    refs = [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), 8).token_ids
            for p in prompts]
    async with cluster(broker.url, pair, tmp_path, cloud_device=load_device("rtx-3090-ti-shared"),
                       cloud_max_batch=1) as (client, edge, clouds):
        res = await asyncio.gather(*(generate_stream(client, GenerateRequest(f"sh{i}", prompt=p, max_new_tokens=8,
                                                                           policy="fixed:2"), 60)
                                     for i, p in enumerate(prompts)))
    assert [r.token_ids for r in res] == refs
    verifies = [e for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "verify"]
    assert all(v["verify_ms"] >= 0.95 * (60 + 3 * (v["draft_length"] + 1)) for v in verifies)
    # a round waited for the other's batch (for the part of it left when it arrived; with a device per
    # session no round waits at all)
    assert max(v["queue_ms"] for v in verifies) >= 0.5 * 60
