"""The verifier batches rounds over a real broker: rounds of held sessions that arrive together
run as one forward with each verdict its own, and a retry of a round whose batch is still
computing joins it and gets the same verdict."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import replace

from pipeline.transport.confirm import confirm_sent
from nodes.cloud import CloudConfig, CloudWorker
from nodes.models.sessions import TargetSession
from nodes.models.train_pair import corpus_documents
from pipeline.transport import bus
from pipeline import logs
from schemas import subjects
from schemas.codec import Int32Array, Limits, decode, encode
from schemas.messages import DraftMsg, VerdictMsg
from schemas.rounds import Draft
from tests.pipeline_fixtures import read_log

LIMITS = Limits(max_draft_length=8)


@asynccontextmanager
async def verifier(url: str, pair, log_dir, **config):
    nc = await bus.connect(url, "cloud-1")
    w = CloudWorker(nc, pair.target, pair.vocab_size, CloudConfig("cloud-1", **config),
                    Limits(max_draft_length=8, vocab_size=pair.vocab_size),
                    logs.configure("cloud-1", log_dir / "cloud-1.jsonl"))
    await w.start()
    client = await bus.connect(url, "client", long_lived=False)
    await confirm_sent(nc, 10.0)
    try:
        yield client, w
    finally:
        await w.stop()
        await nc.close()
        await client.close()


def context(pair, n: int, doc: int) -> list[int]:
    text = " ".join(corpus_documents()[doc:doc + 40])
    ids = pair.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) >= n
    return ids[:n]


async def verdict(client, dm: DraftMsg, inbox_timeout: float = 10) -> VerdictMsg:
    reply = await client.request(subjects.draft("edge-x", "cloud-1"), encode(dm), timeout=inbox_timeout)
    return decode(reply.data, LIMITS, expect=(VerdictMsg,))


def expected(pair, ctx: list[int], rounds: list[list[int]]) -> list[tuple[int, int]]:
    """The per-request path's verdicts for these greedy rounds."""
    s = TargetSession(pair.target, ctx, pair.vocab_size)
    return [(v.accepted, v.next_token) for v in (s.verify(Draft(r)) for r in rounds)]


async def test_rounds_of_held_sessions_arriving_together_run_as_one_batch(broker, pair, tmp_path):
    ctxs = [context(pair, n, i) for i, n in enumerate((12, 80, 150, 33, 5, 260))]
    r0 = [[32], [101, 32], [116, 104, 101], [], [115], [97, 32, 98, 99]]
    r1 = [[116, 104], [], [32, 97, 110, 100, 32], [101], [104, 101, 108, 108, 111, 32, 119], [32]]
    async with verifier(broker.url, pair, tmp_path, batch_wait_ms=300.0, max_batch=8) as (client, w):
        first = await asyncio.gather(*(verdict(client, DraftMsg(f"b{i}", 0, 0, "edge-x", Int32Array(r), 0,
                                                                context=Int32Array(c), session="n1"))
                                       for i, (c, r) in enumerate(zip(ctxs, r0))))
        w.batcher.sizes.clear()
        # every session is held and idle: the batch waits until all six have a round in hand
        second = await asyncio.gather(*(verdict(client, DraftMsg(f"b{i}", 1, 0, "edge-x", Int32Array(r), 0,
                                                                 session="n1"))
                                         for i, r in enumerate(r1)))
        sizes = dict(w.batcher.sizes)
        used = set(w.verifier.cache.used)
    assert sizes == {6: 1}, sizes
    for i, (c, a, b) in enumerate(zip(ctxs, r0, r1)):
        assert [(first[i].accepted, first[i].next_token), (second[i].accepted, second[i].next_token)] == \
            expected(pair, c, [a, b]), i
    assert len(used) == 6
    batch = [e for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "verify_batch"]
    assert batch and batch[-1]["size"] == 6 and batch[-1]["slot_rows"] == 6


async def test_a_retry_of_a_round_whose_batch_is_computing_gets_the_same_verdict(broker, pair, tmp_path):
    short, long = context(pair, 40, 1), context(pair, 2500, 0)
    a0 = DraftMsg("a", 0, 0, "edge-x", Int32Array([116, 104, 101]), 0, context=Int32Array(long), session="n1")
    async with verifier(broker.url, pair, tmp_path) as (client, w):
        # another held session keeps compute on the model thread (the loop stays free for the retry)
        await verdict(client, DraftMsg("b", 0, 0, "edge-x", Int32Array([32]), 0, context=Int32Array(short),
                                       session="n1"))
        a_task = asyncio.create_task(verdict(client, a0))  # prefills 2,500 tokens: ten chunks, tens of ms
        while not w.batcher.running:
            await asyncio.sleep(0.0005)
        computing_at_retry = not a_task.done()  # a's context is still being prefilled (a chunk a batch)
        retry = await verdict(client, replace(a0, attempt=1))
        original = await a_task
        again = await verdict(client, replace(a0, attempt=2))  # applied: the cached verdict
        nxt = await verdict(client, DraftMsg("a", 1, 0, "edge-x", Int32Array([32]), 0, session="n1"))
    assert computing_at_retry
    assert (retry.accepted, retry.next_token) == (original.accepted, original.next_token)
    assert (retry.attempt, original.attempt, again.attempt) == (1, 0, 2)
    assert (again.accepted, again.next_token) == (original.accepted, original.next_token)
    want = expected(pair, long, [[116, 104, 101], [32]])
    assert [(original.accepted, original.next_token), (nxt.accepted, nxt.next_token)] == want
    events = [e for e in read_log(tmp_path / "cloud-1.jsonl")]
    joined = [e for e in events if e["event"] == "joined_in_flight"]
    assert joined and joined[0]["attempt"] == 1 and any(e["event"] == "verdict_resent" for e in events)
