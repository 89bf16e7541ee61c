"""Wire form of the continuous speculation tree (docs/stream-tree.md), schema version 4.

Two messages, both idempotent (nodes/protocol/stream_tree.py), so a link that drops, duplicates or
reorders them costs only time:

- `stream_nodes`, edge -> cloud: the edge's root (id, context position, token) and groups of
  expansions (parent id, ((child id, token), ...)); no groups is a ping asking for the verdict
  again. It names the request's session (edge, request, nonce) and sampling parameters, and carries
  the committed context the edge holds (`context`) until the edge has heard a verdict and on every
  resend, so a verifier that never saw the session, or lost it, can open it from there. `end` frees it.
- `stream_verdict`, cloud -> edge: the committed context from `start` on, and the verifier's running
  counters (misses, target forwards, nodes verified, groups dropped as stale), which the edge logs.

Errors travel as the chain codec's `error` message (schemas/messages.ErrorMsg), which every peer
reads. Version 4 sits above the chain codec's, the tree drafts' and the rounds drafted ahead, so a
peer that does not speak the stream tree answers `version` instead of misreading it. Every bound
of `Limits` (nodes/protocol/stream_tree.py) is enforced here, at decode, before anything is stored.
"""
from __future__ import annotations

from dataclasses import dataclass

import msgpack

from nodes.protocol.stream_tree import Group, Limits, NodesMsg, VerdictMsg
from schemas.codec import Limits as CodecLimits
from schemas.codec import SchemaError, _short, unpack_map
from schemas.messages import _check_sampling, valid_id

STREAM_SCHEMA_VERSION = 4
NODES_TYPE = "stream_nodes"
VERDICT_TYPE = "stream_verdict"
MAX_NODE_ID = 1 << 62  # ids only grow, one per node: never reached
MAX_COUNTER = 1 << 62


@dataclass(frozen=True)
class StreamNodes:
    """One edge -> cloud message of request `request_id`'s stream tree."""

    edge_id: str
    request_id: str
    session: str  # the edge's nonce for this request: a verifier's session is (edge, request, nonce)
    seed: int
    nodes: NodesMsg
    temperature: float = 0.0
    top_p: float = 1.0
    context: tuple[int, ...] | None = None  # the committed context the edge holds (opens a session)
    end: bool = False  # the request is over: the verifier frees the session

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.edge_id, self.request_id, self.session)


@dataclass(frozen=True)
class StreamVerdict:
    """One cloud -> edge message: `verdict` plus the verifier's counters for this session so far."""

    request_id: str
    session: str
    verifier_id: str
    verdict: VerdictMsg
    misses: int = 0
    forwards: int = 0
    verified: int = 0
    stale: int = 0
    verify_ms: float = 0.0


def encode_nodes(m: StreamNodes) -> bytes:
    body = {"v": STREAM_SCHEMA_VERSION, "t": NODES_TYPE, "edge_id": m.edge_id, "request_id": m.request_id,
            "session": m.session, "seed": m.seed, "temperature": m.temperature, "top_p": m.top_p,
            "root": list(m.nodes.root), "groups": [[p, [c for kid in kids for c in kid]] for p, kids in m.nodes.groups],
            "end": m.end}
    if m.context is not None:
        body["context"] = list(m.context)
    return msgpack.packb(body, use_bin_type=True)


def encode_verdict(m: StreamVerdict) -> bytes:
    body = {"v": STREAM_SCHEMA_VERSION, "t": VERDICT_TYPE, "request_id": m.request_id, "session": m.session,
            "verifier_id": m.verifier_id, "start": m.verdict.start, "tokens": list(m.verdict.tokens),
            "misses": m.misses, "forwards": m.forwards, "verified": m.verified, "stale": m.stale,
            "verify_ms": m.verify_ms}
    return msgpack.packb(body, use_bin_type=True)


def stream_version(payload: bytes, limits: CodecLimits = CodecLimits()) -> int | None:
    """The message's schema version, or None when it is not a readable map (cheap dispatch)."""
    try:
        v = unpack_map(payload, limits).get("v")
    except SchemaError:
        return None
    return v if type(v) is int else None


_NODES_FIELDS = frozenset({"v", "t", "edge_id", "request_id", "session", "seed", "temperature", "top_p", "root",
                           "groups", "context", "end"})
_VERDICT_FIELDS = frozenset({"v", "t", "request_id", "session", "verifier_id", "start", "tokens", "misses",
                             "forwards", "verified", "stale", "verify_ms"})


def _body(payload: bytes, kind: str, codec: CodecLimits, known: frozenset[str]) -> dict:
    """The message's map, of this schema and type, with no field outside `known`."""
    body = unpack_map(payload, codec)
    v = body.get("v")
    if type(v) is not int or v != STREAM_SCHEMA_VERSION:
        raise SchemaError(f"{kind}: schema version {_short(v)} is not supported "
                          f"(the stream tree speaks {STREAM_SCHEMA_VERSION})", "version")
    if body.get("t") != kind:
        raise SchemaError(f"expected a {kind} message, got {_short(body.get('t'))}")
    extra = set(body) - known
    if extra:
        raise SchemaError(f"{kind}: unknown fields {_short(sorted(map(str, extra)))}")
    return body


def _int(body: dict, name: str, kind: str, lo: int, hi: int) -> int:
    v = body.get(name)
    if type(v) is not int or not lo <= v < hi:
        raise SchemaError(f"{kind}: field '{name}' is {_short(v)}, not an int in [{lo}, {hi})")
    return v


def _ident(body: dict, name: str, kind: str, empty_ok: bool = False) -> str:
    v = body.get(name)
    if not isinstance(v, str) or not (valid_id(v) or (empty_ok and v == "")):
        raise SchemaError(f"{kind}: field '{name}' is not a valid id")
    return v


def _number(body: dict, name: str, kind: str, default: float) -> float:
    v = body.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise SchemaError(f"{kind}: field '{name}' must be a finite number")
    return float(v)


def _tokens(v: object, kind: str, name: str, cap: int, vocab: int) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > cap:
        raise SchemaError(f"{kind}: field '{name}' must be a list of at most {cap} token ids")
    if any(type(t) is not int or not 0 <= t < vocab for t in v):
        raise SchemaError(f"{kind}: field '{name}' holds a value that is not a token id below {vocab}")
    return tuple(v)


def _groups(raw: object, limits: Limits, vocab: int) -> tuple[Group, ...]:
    kind = NODES_TYPE
    if not isinstance(raw, list) or len(raw) > limits.max_groups_per_msg:
        raise SchemaError(f"{kind}: 'groups' must be a list of at most {limits.max_groups_per_msg} groups", "too_long")
    out = []
    for g in raw:
        if not isinstance(g, list) or len(g) != 2 or type(g[0]) is not int or not isinstance(g[1], list):
            raise SchemaError(f"{kind}: a group is [parent id, [child id, token, ...]], got {_short(g)}")
        parent, flat = g
        if not 0 < parent < MAX_NODE_ID:
            raise SchemaError(f"{kind}: parent id {_short(parent)} is not in 1..2**62")
        if not flat or len(flat) % 2 or len(flat) > 2 * limits.max_width:
            raise SchemaError(f"{kind}: node {parent} has {len(flat) / 2:g} children, not 1..{limits.max_width}")
        if any(type(x) is not int for x in flat):
            raise SchemaError(f"{kind}: node {parent}'s children hold a value that is not an int")
        kids = tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
        toks = [t for _, t in kids]
        if len(set(toks)) != len(toks):
            raise SchemaError(f"{kind}: node {parent} has repeated child tokens {_short(toks)}")
        for cid, t in kids:
            if not parent < cid < MAX_NODE_ID:
                raise SchemaError(f"{kind}: child id {cid} of node {parent} is not above its parent's (ids only grow)")
            if not 0 <= t < vocab:
                raise SchemaError(f"{kind}: child {cid} of node {parent} has token {t} outside 0..{vocab - 1}")
        out.append((parent, kids))
    return tuple(out)


def decode_nodes(payload: bytes, limits: Limits = Limits(), codec: CodecLimits = CodecLimits()) -> StreamNodes:
    """A stream_nodes message, every bound checked; SchemaError (code `version` for another schema)
    naming the first thing that is wrong."""
    kind = NODES_TYPE
    body = _body(payload, kind, codec, _NODES_FIELDS)
    edge_id, request_id = _ident(body, "edge_id", kind), _ident(body, "request_id", kind)
    session = _ident(body, "session", kind)
    seed = _int(body, "seed", kind, 0, 1 << 63)
    temperature, top_p = _number(body, "temperature", kind, 0.0), _number(body, "top_p", kind, 1.0)
    _check_sampling(temperature, top_p)
    root = body.get("root")
    if not isinstance(root, list) or len(root) != 3 or any(type(x) is not int for x in root):
        raise SchemaError(f"{kind}: 'root' must be [node id, context position, token], got {_short(root)}")
    if not 0 < root[0] < MAX_NODE_ID or not 0 <= root[1] < codec.max_context_tokens \
            or not 0 <= root[2] < codec.vocab_size:
        raise SchemaError(f"{kind}: root {_short(root)} has an id, position or token out of range")
    groups = _groups(body.get("groups"), limits, codec.vocab_size)
    context = None
    if body.get("context") is not None:
        context = _tokens(body["context"], kind, "context", codec.max_context_tokens, codec.vocab_size)
        if len(context) != root[1] + 1 or context[-1] != root[2]:
            raise SchemaError(f"{kind}: context of {len(context)} tokens does not end at the root {_short(root)}")
    end = body.get("end", False)
    if not isinstance(end, bool):
        raise SchemaError(f"{kind}: field 'end' must be a bool")
    return StreamNodes(edge_id, request_id, session, seed, NodesMsg(tuple(root), groups), temperature, top_p,
                       context, end)


def decode_verdict(payload: bytes, limits: Limits = Limits(), codec: CodecLimits = CodecLimits()) -> StreamVerdict:
    """A stream_verdict message, bounded (at most `max_verdict_tokens` tokens)."""
    kind = VERDICT_TYPE
    body = _body(payload, kind, codec, _VERDICT_FIELDS)
    request_id, session = _ident(body, "request_id", kind), _ident(body, "session", kind)
    verifier_id = _ident(body, "verifier_id", kind)
    start = _int(body, "start", kind, 0, codec.max_context_tokens + 1)
    tokens = _tokens(body.get("tokens"), kind, "tokens", limits.max_verdict_tokens, codec.vocab_size)
    counters = [_int(body, k, kind, 0, MAX_COUNTER) if k in body else 0 for k in ("misses", "forwards", "verified",
                                                                                  "stale")]
    verify_ms = _number(body, "verify_ms", kind, 0.0)
    if verify_ms < 0:
        raise SchemaError(f"{kind}: field 'verify_ms' is negative")
    return StreamVerdict(request_id, session, verifier_id, VerdictMsg(start, tokens), *counters, verify_ms=verify_ms)
