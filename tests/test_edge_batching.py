"""The edge drafts concurrent requests' rounds as batches over a real broker, and every request's
output is what it is alone: greedy equals target-only, sampled equals the in-process engine with
the same seed, under fixed lengths and per-row stop rules (confidence, acceptance head)."""
from __future__ import annotations

import asyncio

from control import make_policy
from nodes.models.train_pair import corpus_documents
from nodes.speculative import speculative_generate, target_only_generate
from pipeline.bench.rounds import summarize
from pipeline.transport.client import generate_stream
from schemas.messages import GenerateRequest
from schemas.rounds import SamplingParams
from tests.pipeline_fixtures import cluster, read_log

POLICIES = ["fixed:3", "fixed:8", "hf-confidence:0.5", "specdec++:0.5", "fixed:1", "fixed:6"]


async def test_concurrent_requests_draft_in_batches_and_match_their_references(broker, pair, tmp_path):
    docs = corpus_documents()
    prompts = [docs[i][: 40 + 23 * i] for i in range(12)]
    ids = [pair.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    greedy = [target_only_generate(pair, x, 32).token_ids for x in ids[:6]]
    sampled = [speculative_generate(pair, x, 32, make_policy(POLICIES[i], max_length=8), SamplingParams(0.9),
                                    seed=i).token_ids for i, x in enumerate(ids[6:])]
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        results = await asyncio.gather(*(
            generate_stream(client, GenerateRequest(f"b-{i}", prompt=p, max_new_tokens=32, policy=POLICIES[i % 6],
                                                    temperature=0.0 if i < 6 else 0.9, seed=i - 6), 120)
            for i, p in enumerate(prompts)))
    for i, r in enumerate(results):
        assert r.ok, r.error
        assert r.token_ids == (greedy[i] if i < 6 else sampled[i - 6]), f"request {i} ({POLICIES[i % 6]})"
    log = read_log(tmp_path / "edge-1.jsonl")
    rounds = [e for e in log if e["event"] == "round"]
    batches = [e for e in log if e["event"] == "draft_batch"]
    assert batches and max(b["size"] for b in batches) >= 4, "no batched drafting seen"
    assert any(len(set(b["rows_per_step"])) > 1 for b in batches), "no row left a batch early"
    assert max(r["draft_batch_size"] for r in rounds) >= 4
    assert edge.drafter.why_not is None and edge.drafter.cache.used == set()  # every slot went back
    # what `specstop bench pipeline` reads from these logs adds up
    cloud = read_log(tmp_path / "cloud-1.jsonl")
    s = summarize({"edge-1": log, "cloud-1": cloud})
    sizes = s["batch_sizes"]
    steps = [n for b in batches for n in b["rows_per_step"]]
    assert sum(sizes["edge_draft"].values()) == len(steps)  # one entry per draft step, by its rows
    assert sum(int(k) * v for k, v in sizes["edge_draft"].items()) == sum(r["draft_length"] for r in rounds)
    # every verified round once, plus the batches a long context shared while it was prefilled in chunks
    again = sum(e.get("prefilling", 0) for e in cloud if e["event"] == "verify_batch")
    assert sum(int(k) * v for k, v in sizes["cloud_verify"].items()) == sum(e["event"] == "verify" for e in cloud) + again
    parts = s["per_round_ms"]
    assert parts["rounds"] == len(rounds) and parts["edge_forward_ms"] > 0 and parts["cloud_forward_ms"] > 0


async def test_a_draft_model_without_slot_support_drafts_per_request(pair, tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from nodes.draft_batcher import DraftBatchConfig, DraftBatcher
    from nodes.models.batch_draft import SlotDraftSession
    from nodes.models.sessions import DraftSession
    from pipeline.transport.worker_base import WorkerBase
    from pipeline import logs

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=32, n_layer=1, n_head=2, bos_token_id=0,
                                      eos_token_id=0)).eval()
    log = logs.configure("edge-x", tmp_path / "edge-x.jsonl")
    worker = WorkerBase(None, log, "draft", 4)
    try:
        for model, vocab, cfg, slot in ((gpt2, 32, DraftBatchConfig(), False),
                                        (pair.draft, pair.vocab_size, DraftBatchConfig(slot_cache=False), False),
                                        (pair.draft, pair.vocab_size, DraftBatchConfig(), True)):
            drafter = DraftBatcher(worker, model, vocab, cfg, lambda: 1, lambda: True, log)
            assert (drafter.why_not is None) == slot
            session = await drafter.open([1, 2, 3, 4], SamplingParams(0.8))
            assert isinstance(session, SlotDraftSession) == slot and isinstance(session, DraftSession)
            got = (await drafter.draft(session, 5, 9, None, False)).draft
            want = DraftSession(model, [1, 2, 3, 4], vocab, SamplingParams(0.8)).propose(5, 9)
            assert got.tokens == want.tokens
            await drafter.release(session)
            if slot:
                assert drafter.cache.used == set()
            drafter.close()
        assert "GPT2LMHeadModel" in DraftBatcher(worker, gpt2, 32, DraftBatchConfig(), lambda: 1, lambda: True,
                                                 log).why_not
    finally:
        worker.pool.shutdown()


async def test_each_batched_request_keeps_its_own_emulated_device_time(broker, pair, tmp_path):
    from nodes.device import load_device

    prompts = ["The pass statement", "Class definitions", "The import system", "Built-in functions"]
    refs = [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), 10).token_ids
            for p in prompts]
    async with cluster(broker.url, pair, tmp_path, edge_device=load_device("jetson-orin-nano")) as (client, *_):
        results = await asyncio.gather(*(
            generate_stream(client, GenerateRequest(f"emu-{i}", prompt=p, max_new_tokens=10,
                                                    policy=f"fixed:{1 + i % 2 * 2}"), 60)
            for i, p in enumerate(prompts)))
    assert [r.token_ids for r in results] == refs
    rounds = [e for e in read_log(tmp_path / "edge-1.jsonl") if e["event"] == "round"]
    assert max(r["draft_batch_size"] for r in rounds) >= 2, "no batched drafting seen"
    for r in rounds:  # the device's time for this request's own length, whoever shared its batch
        device_ms = 4 + 69 * r["draft_length"]
        assert r["emulated"] and 0.95 * device_ms <= r["draft_ms"] <= 1.05 * device_ms, r
        assert r["edge_queue_ms"] == 0.0 and r["draft_real_ms"] < device_ms
