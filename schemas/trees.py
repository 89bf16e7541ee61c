"""Wire form of a tree draft: a versioned message that a chain-only peer refuses cleanly.

A tree draft carries node tokens and parent indices (parents before children, -1 = the
request's last accepted token), and what a chain draft carries to open or continue a verifier
session (sampling parameters, the context on a first round or a resend, the request's session
nonce), so a tree round follows the chain round's session rules (nodes/protocol/verifier_table).
The sampled walk needs no draft distributions on the wire: children are the draft's top-c tokens,
each candidate's q a one-hot (nodes/models/tree_sampling). It is written with schema version TREE_SCHEMA_VERSION, above
the chain codec's SCHEMA_VERSION, so a peer that only speaks chains answers `version` (the
codec's check) instead of misreading a tree as a chain.
"""
from __future__ import annotations

from dataclasses import dataclass

import msgpack

from schemas.codec import Int32Array, Limits, SchemaError, _short, encode, unpack_map
from schemas.messages import MAX_ROUND, MAX_TREE_NODES, DraftMsg, _check_sampling, valid_id

TREE_SCHEMA_VERSION = 2
TREE_TYPE = "tree_draft"


@dataclass(frozen=True)
class TreeDraftMsg:
    edge_id: str
    request_id: str
    round: int
    attempt: int
    seed: int
    tokens: list[int]
    parents: list[int]
    temperature: float = 0.0
    top_p: float = 1.0
    context: list[int] | None = None  # full context: first round, or a resend
    session: str = ""                 # the edge's nonce for this request (as DraftMsg.session)

    def validate(self, limits: Limits = Limits()) -> None:
        for name in ("edge_id", "request_id"):
            v = getattr(self, name)
            if not isinstance(v, str) or not valid_id(v):
                raise SchemaError(f"tree_draft: field '{name}' is not a valid id")
        for name in ("round", "attempt"):
            v = getattr(self, name)
            if type(v) is not int or not 0 <= v < MAX_ROUND:
                raise SchemaError(f"tree_draft: field '{name}' must be an int in [0, {MAX_ROUND})")
        if type(self.seed) is not int or not 0 <= self.seed < 1 << 63:  # round seeds span 63 bits (round_seed)
            raise SchemaError("tree_draft: field 'seed' must be an int in [0, 2**63)")
        if not isinstance(self.tokens, list) or not isinstance(self.parents, list):
            raise SchemaError("tree_draft: 'tokens' and 'parents' must be lists")
        if len(self.tokens) != len(self.parents):
            raise SchemaError(f"tree_draft: {len(self.tokens)} tokens but {len(self.parents)} parents")
        if len(self.tokens) > MAX_TREE_NODES:
            raise SchemaError(f"tree_draft: {len(self.tokens)} nodes exceed the limit of {MAX_TREE_NODES}", "too_long")
        for i, (t, p) in enumerate(zip(self.tokens, self.parents)):
            if type(t) is not int or not 0 <= t < limits.vocab_size:
                raise SchemaError(f"tree_draft: token {i} is {_short(t)}, not a token id")
            if type(p) is not int or not -1 <= p < i:
                raise SchemaError(f"tree_draft: node {i} has parent {_short(p)}, not an earlier node or -1")
        if not self.tokens:
            raise SchemaError("tree_draft: a tree has at least one node (an empty round is a chain draft)")
        for name in ("temperature", "top_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SchemaError(f"tree_draft: field '{name}' must be a number")
        _check_sampling(self.temperature, self.top_p)
        if not isinstance(self.session, str) or (self.session and not valid_id(self.session)):
            raise SchemaError("tree_draft: session must be 1..128 ASCII letters, digits, '-' or '_'")
        if self.context is not None:
            if not isinstance(self.context, list) or not self.context:
                raise SchemaError("tree_draft: context must be a non-empty list")
            if len(self.context) > limits.max_context_tokens:
                raise SchemaError(f"tree_draft: context longer than {limits.max_context_tokens} tokens")
            if any(type(t) is not int or not 0 <= t < limits.vocab_size for t in self.context):
                raise SchemaError("tree_draft: context holds a value that is not a token id")

    def to_draft_msg(self) -> DraftMsg:
        """The chain-shaped view the verifier's session table admits (round, attempt, context, nonce);
        the parents travel beside it."""
        return DraftMsg(self.request_id, self.round, self.attempt, self.edge_id, Int32Array(self.tokens), self.seed,
                        float(self.temperature), float(self.top_p),
                        context=None if self.context is None else Int32Array(self.context), session=self.session)

    @classmethod
    def from_draft_msg(cls, m: DraftMsg, parents: list[int]) -> "TreeDraftMsg":
        return cls(m.edge_id, m.request_id, m.round, m.attempt, m.seed, list(m.tokens), list(parents),
                   m.temperature, m.top_p, None if m.context is None else list(m.context), m.session)


def encode_tree(msg: TreeDraftMsg) -> bytes:
    body = {"v": TREE_SCHEMA_VERSION, "t": TREE_TYPE}
    body.update({k: getattr(msg, k) for k in TreeDraftMsg.__dataclass_fields__})
    return msgpack.packb(body, use_bin_type=True)


def decode_tree(payload: bytes, limits: Limits = Limits()) -> TreeDraftMsg:
    body = unpack_map(payload, limits)
    v = body.get("v")
    if type(v) is not int or v != TREE_SCHEMA_VERSION:
        raise SchemaError(f"tree_draft: schema version {_short(v)} is not supported "
                          f"(tree drafts speak {TREE_SCHEMA_VERSION})", "version")
    if body.get("t") != TREE_TYPE:
        raise SchemaError(f"expected a {TREE_TYPE} message, got {_short(body.get('t'))}")
    fields = TreeDraftMsg.__dataclass_fields__
    missing = [k for k in _REQUIRED if k not in body]
    if missing:
        raise SchemaError(f"tree_draft: missing field '{missing[0]}'")
    msg = TreeDraftMsg(**{k: body[k] for k in fields if k in body})
    msg.validate(limits)
    return msg


_REQUIRED = ("edge_id", "request_id", "round", "attempt", "seed", "tokens", "parents")


def encode_round(msg: DraftMsg, parents: list[int] | None) -> bytes:
    """A round on the wire: a chain draft at the chain schema, a tree (parents given) as a v2 tree_draft."""
    return encode(msg) if parents is None else encode_tree(TreeDraftMsg.from_draft_msg(msg, parents))
