"""Draft trees through the real pipeline: edge and cloud workers over a real nats-server."""
from __future__ import annotations

import asyncio

import pytest

from nodes.models.train_pair import corpus_documents
from nodes.speculative import target_only_generate
from pipeline.transport.client import generate_stream
from schemas.messages import GenerateRequest
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
        results = await asyncio.gather(*(
            generate_stream(client, GenerateRequest(f"tree-{i}", prompt=p, max_new_tokens=40), 120)
            for i, p in enumerate(prompts)))
    for i, res in enumerate(results):
        assert res.ok, res.error
        assert res.token_ids == refs[i], f"prompt {i} with tree {shape} differs from target-only"
    verified = [e for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "verify"]
    depth, width = (int(x) for x in shape.split("x"))
    assert any(e["tree"] and e["draft_length"] == depth * width for e in verified), "no full tree verified"
    assert any(e["accepted"] > 0 for e in verified if e["tree"]), "no tree node accepted"
    assert any(e["batch_size"] > 1 for e in verified if e["tree"]), "no two tree rounds verified in one forward"
