"""Wire form of a tree draft: a versioned message that a chain-only peer refuses cleanly.

A tree draft carries node tokens and parent indices (parents before children, -1 = the
request's last accepted token). It is written with schema version TREE_SCHEMA_VERSION, above
the chain codec's SCHEMA_VERSION, so a peer that only speaks chains answers `version` (the
codec's check) instead of misreading a tree as a chain.
"""
from __future__ import annotations

from dataclasses import dataclass

import msgpack

from schemas.codec import Limits, SchemaError, _short, unpack_map
from schemas.messages import MAX_ROUND, valid_id

TREE_SCHEMA_VERSION = 2
TREE_TYPE = "tree_draft"
MAX_TREE_NODES = 64


@dataclass(frozen=True)
class TreeDraftMsg:
    edge_id: str
    request_id: str
    round: int
    attempt: int
    seed: int
    tokens: list[int]
    parents: list[int]

    def validate(self, limits: Limits = Limits()) -> None:
        for name in ("edge_id", "request_id"):
            v = getattr(self, name)
            if not isinstance(v, str) or not valid_id(v):
                raise SchemaError(f"tree_draft: field '{name}' is not a valid id")
        for name in ("round", "attempt", "seed"):
            v = getattr(self, name)
            if type(v) is not int or not 0 <= v < MAX_ROUND:
                raise SchemaError(f"tree_draft: field '{name}' must be an int in [0, {MAX_ROUND})")
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
    missing = [k for k in fields if k not in body]
    if missing:
        raise SchemaError(f"tree_draft: missing field '{missing[0]}'")
    msg = TreeDraftMsg(**{k: body[k] for k in fields})
    msg.validate(limits)
    return msg
