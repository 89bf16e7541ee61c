"""Send fuzzed messages to running workers and count the replies each one gets.

Every message that carries a reply subject must get exactly one terminal
reply: an error, an ack, a verdict, a JetStream publish ack (timing events go
into a stream), or, for a mutant that happens to be a valid generate request,
its stream's last chunk. A window bounds the messages awaiting their reply,
so the fuzzer measures the handlers, not a flooded client buffer.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from nats.aio.client import Client

from pipeline.chaos.fuzz import Target, fuzz_messages
from schemas.codec import Limits, SchemaError, decode
from schemas.messages import AliveMsg, ErrorMsg, TokenChunk


@dataclass
class SubjectReport:
    subject: str
    sent: int = 0
    with_reply: int = 0
    exactly_one: int = 0
    none: int = 0
    more_than_one: int = 0
    reply_kinds: Counter = field(default_factory=Counter)
    offenders: list = field(default_factory=list)  # (index, replies, payload hex) of the first few misses

    def as_dict(self) -> dict:
        return {"subject": self.subject, "sent": self.sent, "with_reply": self.with_reply,
                "exactly_one_reply": self.exactly_one, "no_reply": self.none, "more_than_one_reply": self.more_than_one,
                "reply_kinds": dict(self.reply_kinds.most_common(8)), "offenders": self.offenders}


def _terminal(data: bytes, headers) -> tuple[bool, str]:
    """(is this a terminal reply, what kind) for one message on a fuzz reply inbox."""
    if headers and headers.get("Status") == "503":
        return True, "no_responders"
    if data[:1] == b"{":
        return True, "jetstream_ack"
    try:
        m = decode(data, Limits(max_payload=1 << 20))
    except SchemaError:
        return True, "undecodable"
    if isinstance(m, TokenChunk):
        return m.done, "chunk_done" if m.done else "chunk"
    if isinstance(m, AliveMsg):  # the edge's keepalive to a client that waits: not an answer
        return False, "keepalive"
    if isinstance(m, ErrorMsg):
        return True, f"error:{m.code}"
    return True, type(m).TYPE


async def fuzz_subject(nc: Client, target: Target, n: int, seed: int = 0, window: int = 256,
                       reply_fraction: float = 0.8, settle_s: float = 90.0) -> SubjectReport:
    """Send `n` mutants of `target`'s template; count terminal replies per message."""
    rep = SubjectReport(target.subject)
    prefix = nc.new_inbox()
    counts: Counter = Counter()
    kinds: Counter = Counter()
    outstanding = asyncio.Semaphore(window)
    expected: set[str] = set()

    async def on_reply(msg) -> None:
        key = msg.subject.rsplit(".", 1)[-1]
        terminal, kind = _terminal(msg.data, msg.headers)
        if terminal:
            counts[key] += 1
            kinds[kind] += 1
            if counts[key] == 1 and key in expected:
                outstanding.release()

    sub = await nc.subscribe(f"{prefix}.*", cb=on_reply)
    rng = random.Random(f"reply:{seed}:{target.name}")
    sent: dict[str, bytes] = {}
    for i, payload in enumerate(fuzz_messages(target, n, seed)):
        rep.sent += 1
        if rng.random() < reply_fraction:
            await outstanding.acquire()
            expected.add(str(i))
            sent[str(i)] = payload
            await nc.publish(target.subject, payload, reply=f"{prefix}.{i}")
        else:
            await nc.publish(target.subject, payload)
        if i % 200 == 0:
            await nc.flush()
    await nc.flush()
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline and sum(1 for k in expected if counts[k]) < len(expected):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a late second reply would show here
    await sub.unsubscribe()
    rep.with_reply = len(expected)
    rep.exactly_one = sum(1 for k in expected if counts[k] == 1)
    rep.none = sum(1 for k in expected if counts[k] == 0)
    rep.more_than_one = sum(1 for k in expected if counts[k] > 1) + sum(
        1 for k in counts if k not in expected)  # a reply to a message sent without one is also one too many
    rep.reply_kinds = kinds
    rep.offenders = [(int(k), counts[k], sent[k][:160].hex()) for k in sorted(expected, key=int) if counts[k] != 1][:5]
    return rep
