"""Hostile messages for every subject: seeded, structure-aware mutations of valid ones.

Each subject gets a valid template of the message it carries; a mutant is one
of: random bytes, msgpack that is not a map, the template with one to three
fields dropped / retyped / pushed to extreme values / added, the wrong `v` or
a non-string `t` (a list once crashed the codec), a truncated or bit-flipped
encoding, or a payload over the size limit. Some mutants stay valid (a
different seed, say): the handlers must treat those as real work, within their
bounds. Deterministic for a given seed, so a failure can be replayed.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from control import make_policy
from schemas import subjects
from schemas.codec import DEFAULT_MAX_PAYLOAD, Int32Array, encode
from schemas.messages import CancelMsg, DraftMsg, GenerateRequest, PolicyUpdate, ResumeMsg, TimingEvent

EXTREME_INTS = (-1, 0, 1, 2**31, 2**53, 2**63 - 1, 2**64 - 1, -(2**63))
EXTREME_FLOATS = (float("nan"), float("inf"), -float("inf"), -0.0, 1e308, -1.0, 1e-300)


@dataclass(frozen=True)
class Target:
    """A subject to fuzz and the valid message its mutants start from."""

    name: str
    subject: str
    template: Any


def targets(edge_id: str, verifier_id: str, tag: str = "fuzz", max_length: int = 8) -> list[Target]:
    gen = GenerateRequest(f"{tag}-gen", prompt="The with statement", max_new_tokens=2, policy="fixed:1")
    sender = f"{tag}-edge"  # drafts carry the edge id of the subject they go on (else refused bad_message)
    draft = DraftMsg(f"{tag}-draft", 0, 0, sender, Int32Array([104, 101]), 7, context=Int32Array([84, 104, 101]))
    timing = TimingEvent(edge_id, f"{tag}-t", 0, 0, 3, 2, 30.0, 5.0, 4.0, 0.1, 20.9, 10.0, "auto", 0, verifier_id,
                         "0", 1, 3)
    policy = PolicyUpdate(edge_id, "auto", 1, make_policy("auto", max_length=max_length).snapshot())
    end = DraftMsg(f"{tag}-draft", 1, 0, sender, Int32Array(), 0, final=True)
    cancel = CancelMsg(f"{tag}-gen", "_INBOX.nobody")
    resume = ResumeMsg(f"{tag}-gen", "_INBOX.nobody")
    return [Target("generate", subjects.GENERATE, gen),
            Target("generate.edge", subjects.generate(edge_id), gen),
            Target("draft", subjects.draft(sender), draft),
            Target("draft.verifier", subjects.draft(sender, verifier_id), draft),
            Target("end", subjects.session_end(sender), end),
            Target("timing", subjects.timing(edge_id), timing),
            Target("policy", subjects.policy(edge_id), policy),
            Target("cancel", subjects.CANCEL, cancel),
            Target("resume", subjects.RESUME, resume)]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(EXTREME_INTS) if rng.random() < 0.5 else rng.randint(-1000, 1000)
    if kind == 3:
        return rng.choice(EXTREME_FLOATS) if rng.random() < 0.5 else rng.uniform(-1e3, 1e3)
    if kind == 4:
        return "".join(rng.choice("ab.*> \x00é\u2603") for _ in range(rng.randrange(0, 12)))
    if kind == 5:
        return rng.randbytes(rng.randrange(0, 40))
    if kind == 6:
        return "x" * rng.choice((129, 300, 5000))
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {str(random_value(rng, depth + 1))[:8]: random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def _mutate_body(body: dict, rng: random.Random) -> dict:
    body = dict(body)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        keys = [k for k in body if k not in ("v", "t")]
        if op == 0 and keys:
            del body[rng.choice(keys)]
        elif op == 1 and keys:
            body[rng.choice(keys)] = random_value(rng)
        elif op == 2:
            body[rng.choice(["extra", "zz", "", "v2"])] = random_value(rng)
        elif op == 3:
            body["v"] = rng.choice([0, 2, "1", None, [1], 1.0])
        elif op == 4:
            body["t"] = rng.choice([[1, 2], {"a": 1}, 3, None, "nope", "chunk", "verdict", "draft", "generate"])
        elif op == 5 and keys:  # keep the type, change the value: the ones most likely to stay valid
            k = rng.choice(keys)
            v = body[k]
            if isinstance(v, bool):
                body[k] = not v
            elif isinstance(v, int):
                body[k] = rng.choice(EXTREME_INTS + (rng.randint(0, 50),))
            elif isinstance(v, float):
                body[k] = rng.choice(EXTREME_FLOATS + (rng.uniform(0, 100),))
            elif isinstance(v, str):
                body[k] = rng.choice([v + "x", "", v * 3, "a.b", f"id-{rng.randrange(10**6)}"])
            elif isinstance(v, bytes):
                body[k] = rng.choice([v[:-1], v + b"\x00", rng.randbytes(len(v)), b"\xff\xff\xff\x7f" * 3])
        elif op == 6:  # a fresh id keeps the rest valid: new work within the bounds
            for k in ("request_id", "edge_id"):
                if k in body and isinstance(body[k], str) and rng.random() < 0.5:
                    body[k] = f"{body[k]}-{rng.randrange(10**6)}"
    return body


def mutant(template: Any, rng: random.Random, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    valid = encode(template)
    roll = rng.random()
    if roll < 0.08:
        return rng.randbytes(rng.randrange(0, 300))
    if roll < 0.14:
        return msgpack.packb(random_value(rng), use_bin_type=True)
    if roll < 0.20:
        return valid[: rng.randrange(0, len(valid))]
    if roll < 0.26:
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if roll < 0.27:
        return b"\x00" * (max_payload + 1 + rng.randrange(100))
    body = _mutate_body(msgpack.unpackb(valid, raw=False), rng)
    return msgpack.packb(body, use_bin_type=True)


def fuzz_messages(target: Target, n: int, seed: int = 0) -> Iterator[bytes]:
    rng = random.Random(f"{seed}:{target.name}")
    for _ in range(n):
        yield mutant(target.template, rng)
