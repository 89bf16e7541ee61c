"""Wire form of a round drafted ahead: a chain draft plus the basis it was drafted on, versioned.

With rounds in flight (`specstop edge --ahead R`) the edge sends round r+1 before round r's verdict
comes back, drafted on the assumption that round r is kept (all its tokens accepted and the target's
next token equal to the draft's own prediction `assumed_next`, nodes/protocol/pipelining.py). The
verifier needs that basis to decide, once round r's verdict exists, whether to verify round r+1 or
drop it without compute. It travels as AHEAD_SCHEMA_VERSION (above the chain codec's and the tree
drafts' versions) with the round's own message packed inside (a chain draft, or a v2 tree draft
for a tree round), so every rule such a round obeys is checked by its own codec, and a peer that
does not speak rounds in flight answers `version` instead of verifying round r+1 as if round r's
outcome were known. A tree round's "kept" is its whole spine accepted (only the spine of a
DEPTHxWIDTH shape reaches full depth) and the next token the assumed one.
"""
from __future__ import annotations

from dataclasses import dataclass

import msgpack

from schemas.codec import Limits, SchemaError, _short, decode, encode, unpack_map
from schemas.messages import DraftMsg
from schemas.trees import TREE_SCHEMA_VERSION, decode_tree, encode_round

AHEAD_SCHEMA_VERSION = 3
AHEAD_TYPE = "ahead_draft"


@dataclass(frozen=True)
class AheadDraftMsg:
    """`draft` is round `draft.round`, drafted assuming round `draft.round - 1` ends with `assumed_next`."""

    draft: DraftMsg
    assumed_next: int
    parents: tuple[int, ...] | None = None  # a tree round's shape (None: a chain)

    @property
    def parent(self) -> int:
        return self.draft.round - 1


def encode_ahead(msg: AheadDraftMsg) -> bytes:
    inner = encode_round(msg.draft, None if msg.parents is None else list(msg.parents))
    body = {"v": AHEAD_SCHEMA_VERSION, "t": AHEAD_TYPE, "draft": inner, "parent": msg.parent,
            "assumed_next": msg.assumed_next}
    return msgpack.packb(body, use_bin_type=True)


def decode_ahead(payload: bytes, limits: Limits = Limits()) -> AheadDraftMsg:
    """The round and its basis; SchemaError (code `version` for another schema) naming what is wrong."""
    body = unpack_map(payload, limits)
    v = body.get("v")
    if type(v) is not int or v != AHEAD_SCHEMA_VERSION:
        raise SchemaError(f"ahead_draft: schema version {_short(v)} is not supported "
                          f"(rounds drafted ahead speak {AHEAD_SCHEMA_VERSION})", "version")
    if body.get("t") != AHEAD_TYPE:
        raise SchemaError(f"expected an {AHEAD_TYPE} message, got {_short(body.get('t'))}")
    inner, parent, assumed = body.get("draft"), body.get("parent"), body.get("assumed_next")
    if not isinstance(inner, bytes):
        raise SchemaError("ahead_draft: field 'draft' must be a packed chain draft")
    parents = None
    if unpack_map(inner, limits).get("v") == TREE_SCHEMA_VERSION:
        tree = decode_tree(inner, limits)
        dm, parents = tree.to_draft_msg(), tuple(tree.parents)
    else:
        dm = decode(inner, limits, expect=(DraftMsg,))
    if type(parent) is not int or parent != dm.round - 1:
        raise SchemaError(f"ahead_draft: basis round {_short(parent)} is not the round before round {dm.round}")
    if type(assumed) is not int or not 0 <= assumed < limits.vocab_size:
        raise SchemaError(f"ahead_draft: assumed_next {_short(assumed)} is not a token id")
    if dm.final or dm.context is not None or not dm.tokens:
        raise SchemaError("ahead_draft: a round drafted ahead carries draft tokens, no context and no final flag "
                          "(a resend or an end goes as a chain draft)")
    return AheadDraftMsg(dm, assumed, parents)
