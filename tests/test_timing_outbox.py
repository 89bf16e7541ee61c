"""Timing events survive a cut leaf link: on the real hub/leaf topology from deploy/ (TLS, nkeys), an
edge's events published while its link to the hub is down wait in its outbox and reach the hub's
timing stream once the link is back — every one, once."""
from __future__ import annotations

import asyncio

import pytest

from pipeline.transport.jetstream import ensure_stream
from pipeline.transport.timing_outbox import TimingOutbox
from pipeline import logs
from pipeline.topology.run import Topology
from pipeline.transport import bus
from pipeline.transport.auth import role_inbox
from schemas import subjects
from schemas.codec import decode, encode
from schemas.messages import TimingEvent

pytestmark = pytest.mark.slow


def event(seq: int) -> bytes:
    return encode(TimingEvent("edge-1", f"r-{seq}", seq, 0, 2, 1, 10.0, 2.0, 3.0, 0.0, 5.0, 2.5, "auto", 1,
                              "cloud-1", None, seq, 2))


async def until(cond, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return cond()


async def test_events_published_while_the_leaf_link_is_down_reach_the_hub_stream_once(tmp_path):
    with Topology(tmp_path, ["edge-1"], ["cloud-1"], proxied_links=True) as topo:
        hub = await bus.connect(topo.hub_url(), "control-1", long_lived=False,
                                auth=topo.auth("controller", "control-1", via_leaf=False),
                                inbox_prefix=role_inbox("controller", "control-1"))
        edge = await bus.connect(topo.leaf_url("edge-1"), "edge-1", auth=topo.auth("edge", "edge-1"),
                                 inbox_prefix=role_inbox("edge", "edge-1"))
        try:
            js = hub.jetstream()
            await ensure_stream(js)
            outbox = TimingOutbox(edge, bus.jetstream(edge), logs.configure("edge-1", tmp_path / "edge.jsonl"),
                                  "edge-1", ack_timeout_s=0.5)
            outbox.start()
            for i in range(5):
                outbox.put(subjects.timing("edge-1"), event(i))
            assert await until(lambda: outbox.stored == 5, 20), (outbox.stored, outbox.retries)

            topo.cut_link("edge-1")
            # give the leaf time to notice the link is gone (the proxy drops it; no event tells us when):
            # publishes before that fail too, by ack timeout, so the sleep only makes the cut clean
            await asyncio.sleep(1.0)
            tried = outbox.retries
            for i in range(5, 25):
                outbox.put(subjects.timing("edge-1"), event(i))
            # the outbox has tried and failed at least twice more before we check what it claims
            assert await until(lambda: outbox.retries >= tried + 2, 30), (outbox.retries, outbox.waiting)
            assert outbox.stored == 5 and outbox.waiting == 20  # nothing pretended stored, nothing dropped

            topo.restore_link("edge-1")
            assert await until(lambda: outbox.waiting == 0, 60), (outbox.waiting, outbox.retries)
            await outbox.close()

            sub = await js.pull_subscribe(f"{subjects.TIMING_PREFIX}.>", durable="outbox-check",
                                          stream=subjects.TIMING_STREAM)
            got = []
            while True:
                try:
                    batch = await sub.fetch(50, timeout=2)
                except Exception:
                    break
                got += [decode(m.data).round for m in batch]
            assert sorted(got) == list(range(25)), got  # every event, once (retries deduplicated)
            assert outbox.retries > 0 and outbox.dropped == 0
        finally:
            await edge.close()
            await hub.close()
