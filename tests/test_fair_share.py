"""One edge cannot take a verifier from the others (issue 21, item 3), over a real nats-server with a
real cloud worker and a real edge: a flooding identity sends many first-round drafts with long
contexts, some under its own edge id (held to its share, then `overloaded`), some under made-up
edge ids (refused: a draft's edge is the one its subject names), while an honest edge's greedy
requests all complete with the target-only output."""
from __future__ import annotations

import asyncio
import random
from contextlib import asynccontextmanager

from control import make_policy
from nodes.cloud import CloudConfig, CloudWorker
from nodes.edge import EdgeConfig, EdgeWorker
from nodes.link import parse_channel
from nodes.models.train_pair import corpus_documents
from pipeline.transport.confirm import confirm_sent
from nodes.policy_book import PolicyBook
from nodes.speculative import target_only_generate
from pipeline import logs
from pipeline.transport import bus
from pipeline.transport.client import generate_stream
from schemas import subjects
from schemas.codec import Int32Array, Limits, decode, encode
from schemas.messages import DraftMsg, ErrorMsg, GenerateRequest, VerdictMsg
from tests.pipeline_fixtures import read_log

HONEST, FLOOD = "edge-honest", "edge-flood"
SHARE = 4
PROMPTS = ["The with statement", "A list comprehension", "def main():", "Exceptions are raised"]


@asynccontextmanager
async def nodes(url: str, pair, log_dir):
    """cloud-1 (8 sessions, 4 per edge, evicting nothing idle for a minute: the shares alone decide)
    and the honest edge, each on its own connection, and the flooder's and the client's connections."""
    limits = Limits(max_draft_length=8, vocab_size=pair.vocab_size)
    conns, workers = [], []
    try:
        log = logs.configure("cloud-1", log_dir / "cloud-1.jsonl")
        conns.append(await bus.connect(url, "cloud-1", log))
        cloud = CloudWorker(conns[-1], pair.target, pair.vocab_size,
                            CloudConfig("cloud-1", max_sessions=2 * SHARE, max_sessions_per_edge=SHARE,
                                        evict_idle_s=60.0), limits, log)
        await cloud.start()
        workers.append(cloud)
        log = logs.configure(HONEST, log_dir / f"{HONEST}.jsonl")
        conns.append(await bus.connect(url, HONEST, log))
        book = PolicyBook(8, 0, learn_locally=True, fallback=make_policy("fixed:3", max_length=8))
        edge = EdgeWorker(conns[-1], pair, EdgeConfig(edge_id=HONEST, default_policy="fixed:3", max_length=8, request_timeout_s=10.0,
                                                      failover_deadline_s=20.0),
                          limits, log, parse_channel("const:0", seed=1), book)
        await edge.start()
        workers.append(edge)
        flooder = await bus.connect(url, "flooder", long_lived=False)
        client = await bus.connect(url, "client", long_lived=False)
        conns += [flooder, client]
        for c in conns:
            await confirm_sent(c, 10.0)
        yield cloud, flooder, client
    finally:
        for w in reversed(workers):
            await w.stop()
        for c in conns:
            await c.close()


def long_context(pair, n: int, doc: int) -> list[int]:
    ids = pair.tokenizer.encode(" ".join(corpus_documents()[doc:doc + 60]), add_special_tokens=False)
    assert len(ids) >= n
    return ids[:n]


async def flood(nc, drafts: list[DraftMsg], lanes: int) -> list[VerdictMsg | ErrorMsg]:
    """Every draft on the flooder's own subject (the only one its permissions would allow), `lanes` at once."""
    gate = asyncio.Semaphore(lanes)

    async def one(dm: DraftMsg):
        async with gate:
            reply = await nc.request(subjects.draft(FLOOD), encode(dm), timeout=60)
            return decode(reply.data, Limits(max_draft_length=8), expect=(VerdictMsg, ErrorMsg))
    return await asyncio.gather(*(one(dm) for dm in drafts))


async def test_a_flooding_edge_gets_its_share_and_refusals_while_an_honest_edge_completes(broker, pair, tmp_path):
    rng = random.Random(21)
    ctx = long_context(pair, 2000, 0)
    own = [DraftMsg(f"flood-{i}", 0, 0, FLOOD, Int32Array([32]), 0, context=Int32Array(ctx), session="f")
           for i in range(24)]
    forged = [DraftMsg(f"forged-{i}", 0, 0, f"e{rng.randrange(10**9)}", Int32Array([32]), 0,
                       context=Int32Array(ctx), session="f") for i in range(24)] + [
        DraftMsg("as-honest", 0, 0, HONEST, Int32Array([32]), 0, context=Int32Array(ctx), session="f")]
    refs = [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), 24).token_ids
            for p in PROMPTS]
    async with nodes(broker.url, pair, tmp_path) as (cloud, flooder, client):
        held = []
        first = await flood(flooder, own[:12] + forged[:12], lanes=24)  # the flooder fills what it may first
        honest = [asyncio.create_task(generate_stream(
            client, GenerateRequest(f"honest-{i}", prompt=p, max_new_tokens=24, policy="fixed:3"), 60,
            subject=subjects.generate(HONEST))) for i, p in enumerate(PROMPTS)]
        while True:  # ... and keeps flooding while the honest edge works
            later = await flood(flooder, own[12:] + forged[12:], lanes=24)
            held.append(sum(k[0] == FLOOD for k in cloud.sessions))
            if all(t.done() for t in honest):
                break
            await asyncio.sleep(0.05)
        results = [t.result() for t in honest]
        held.append(sum(k[0] == FLOOD for k in cloud.sessions))
    own_replies = first[:12] + later[:12]
    forged_replies = first[12:] + later[12:]
    assert all(r.ok for r in results), [r.error for r in results]
    assert [r.token_ids for r in results] == refs
    assert max(held) <= SHARE
    verdicts = [r for r in own_replies if isinstance(r, VerdictMsg)]
    refused = [r for r in own_replies if isinstance(r, ErrorMsg)]
    assert 1 <= len(verdicts) <= SHARE and len(verdicts) + len(refused) == len(own_replies)
    assert {r.code for r in refused} == {"overloaded"}
    assert all(f"edge {FLOOD}" in r.message and "_per_edge=" in r.message for r in refused)
    for dm, r in zip(forged, forged_replies, strict=True):
        assert isinstance(r, ErrorMsg) and r.code == "bad_message", r
        assert repr(dm.edge_id) in r.message and repr(FLOOD) in r.message
    assert not any(k[0] not in (FLOOD, HONEST) for k in cloud.sessions)
    events = read_log(tmp_path / "cloud-1.jsonl")
    assert sum(e["event"] == "bad_message" and e.get("subject") == subjects.draft(FLOOD) for e in events) >= 24
