"""How an edge takes the controller's policy snapshots, with no transport in it.

Snapshots come two ways: pushed (`PolicyUpdate` on the edge's policy subject) and read back from the
controller's bucket (at start, and after a reconnect, since pushes may have been missed). Both must
be for this edge and name a policy it can make (`spec_of`). A pushed version that is no plausible
successor is applied only when the bucket holds exactly it (`bucket_confirms`): the bucket is the
controller's word, a push may be forged. A bucket entry is applied as it is, unless this edge acts on
that version already (`restore`).
"""
from __future__ import annotations

from control import ControlError
from nodes.policy_book import PolicyBook
from schemas.messages import PolicyUpdate


def spec_of(upd: PolicyUpdate, edge_id: str, book: PolicyBook, what: str = "update") -> str:
    """The canonical spec `upd` is for; ControlError when it is another edge's or names no policy."""
    if upd.edge_id != edge_id:
        raise ControlError(f"{what} is for edge {upd.edge_id!r}")
    return book.canonical(upd.policy)


def bucket_confirms(stored: PolicyUpdate, upd: PolicyUpdate) -> bool:
    """Whether the bucket's entry is exactly this update (same version, same snapshot)."""
    return stored.version == upd.version and stored.snapshot == upd.snapshot


def restore(upd: PolicyUpdate, edge_id: str, book: PolicyBook) -> bool:
    """Apply a bucket entry; False when the book already acts on its version. ControlError (the book
    unchanged) for another edge's entry or a snapshot the policy refuses."""
    spec = spec_of(upd, edge_id, book, "entry")
    if book.versions.get(spec, 0) == upd.version:
        return False
    book.apply_update(spec, upd.version, upd.snapshot, confirmed=True)
    return True
