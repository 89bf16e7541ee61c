"""Rules of proactive drafting (SpecEdge): what a pre-drafted continuation may be used for.

While round r (L drafted tokens d_1..d_L) is in flight, the edge drafts ahead assuming full
acceptance. The draft model's own next token after d_L is p (its prediction at position L+1), and
the continuation c_1..c_k is drafted after p. The verdict's next token v (bonus or correction) is
unknown until it arrives, so the continuation is usable only when the verdict accepts all L
tokens AND v == p; otherwise it is discarded and the draft cache is cropped to the verdict.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AheadDraft:
    """A continuation drafted while round `round_id` was in flight."""

    round_id: int
    drafted: int  # L: tokens sent in the round in flight
    predicted_next: int  # p: draft model's token at position L+1
    continuation: tuple[int, ...]  # drafted after p


def keeps(ahead: AheadDraft, round_id: int, accepted: int, next_token: int) -> bool:
    """True when the verdict for `round_id` leaves the pre-drafted continuation valid."""
    if round_id != ahead.round_id:
        raise ValueError(f"verdict for round {round_id} applied to ahead draft of round {ahead.round_id}")
    if not 0 <= accepted <= ahead.drafted:
        raise ValueError(f"accepted={accepted} outside 0..{ahead.drafted}")
    return accepted == ahead.drafted and next_token == ahead.predicted_next


class VerdictLedger:
    """Exactly-once: each round's verdict applies once, in order."""

    def __init__(self) -> None:
        self._applied: set[int] = set()

    def apply(self, round_id: int) -> bool:
        """Record a verdict; False when it was already applied (a duplicate to drop)."""
        if round_id in self._applied:
            return False
        self._applied.add(round_id)
        return True
