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


# --- R rounds in flight -------------------------------------------------------------------------
#
# Each round names its basis: the round whose verdict it continues, and (when it was drafted before
# that verdict came back) the token the edge predicted that verdict ends with. A chain of rounds in
# flight is r, r+1 (basis r, assuming r kept), r+2 (basis r+1, assuming r+1 kept), ... The first
# verdict that does not keep its round's prediction voids every round after it, on both sides
# independently: the edge cancels them and redrafts on the verdict, the cloud finds their basis
# broken and drops them without compute. Verdicts are applied once and in round order; a verdict
# that arrives before an earlier one waits; a resent round whose verdict exists is answered from the
# cloud's record (never verified twice: a second sample would let retries pick among verdicts).


class KeepRule:
    """The keep rule as an object, so that a test can swap in a wrong one (its negative control)."""

    def keeps(self, ahead: AheadDraft, round_id: int, accepted: int, next_token: int) -> bool:
        return keeps(ahead, round_id, accepted, next_token)

    def committed_next(self, ahead: AheadDraft, next_token: int) -> int:
        """The token a kept round ends with: the target's (here equal to the prediction)."""
        return next_token


@dataclass(frozen=True)
class Basis:
    """What a round is drafted on: `parent`'s verdict (-1: the prompt); `assumed_next` is the token
    the edge predicted that verdict ends with, None when the verdict was known when drafting."""

    parent: int
    assumed_next: int | None


@dataclass(frozen=True)
class SentRound:
    round_id: int
    basis: Basis
    drafted: int  # L
    predicted_next: int  # the draft's token after the round's L: its child's assumed_next

    def ahead(self) -> AheadDraft:
        return AheadDraft(self.round_id, self.drafted, self.predicted_next, ())


@dataclass(frozen=True)
class Applied:
    """A verdict applied at the edge: the round, its verdict, whether its child's basis holds, the
    token its emitted tokens end with, and the rounds in flight it voids."""

    sent: SentRound
    accepted: int
    next_token: int
    kept: bool
    last_token: int
    cancelled: tuple[int, ...]


class EdgeWindow:
    """Edge side: at most `max_in_flight` rounds in flight; verdicts applied once, in round order."""

    def __init__(self, max_in_flight: int, rule: KeepRule = KeepRule()) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight={max_in_flight} must be >= 1")
        self.max_in_flight, self.rule = max_in_flight, rule
        self.in_flight: list[SentRound] = []
        self.last_applied = -1
        self._next_id = 0
        self._ledger = VerdictLedger()
        self._early: dict[int, tuple[int, int]] = {}  # verdicts that came before an earlier round's

    @property
    def full(self) -> bool:
        return len(self.in_flight) >= self.max_in_flight

    def next_basis(self) -> Basis:
        """The basis of the next round: the last round in flight, assumed kept, or the last verdict."""
        if self.in_flight:
            last = self.in_flight[-1]
            return Basis(last.round_id, last.predicted_next)
        return Basis(self.last_applied, None)

    def send(self, drafted: int, predicted_next: int) -> SentRound:
        if self.full:
            raise ValueError(f"{len(self.in_flight)} rounds already in flight (at most {self.max_in_flight})")
        if drafted < 1:
            raise ValueError(f"drafted={drafted} must be >= 1")
        r = SentRound(self._next_id, self.next_basis(), drafted, predicted_next)
        self._next_id += 1
        self.in_flight.append(r)
        return r

    def on_verdict(self, round_id: int, accepted: int, next_token: int) -> list[Applied]:
        """The verdicts this arrival lets apply, in order: none for a duplicate, for a round no longer
        in flight (voided), or for one that waits for an earlier round's verdict."""
        ids = [r.round_id for r in self.in_flight]
        if round_id not in ids or round_id in self._early:
            return []
        self._early[round_id] = (accepted, next_token)
        out: list[Applied] = []
        while self.in_flight and self.in_flight[0].round_id in self._early:
            sent = self.in_flight.pop(0)
            a, v = self._early.pop(sent.round_id)
            if not self._ledger.apply(sent.round_id):
                continue
            kept = self.rule.keeps(sent.ahead(), sent.round_id, a, v)
            last = self.rule.committed_next(sent.ahead(), v) if kept else v
            cancelled: tuple[int, ...] = ()
            if not kept:
                cancelled = tuple(r.round_id for r in self.in_flight)
                self.in_flight.clear()
                self._early.clear()
            self.last_applied = sent.round_id
            out.append(Applied(sent, a, v, kept, last, cancelled))
        return out


@dataclass(frozen=True)
class Verify:
    """Verify the round; `context_ends_with` is the token the target's context must end with first
    (the basis's assumed token; under the keep rule it already does), None when not assumed."""

    context_ends_with: int | None


@dataclass(frozen=True)
class Stale:
    reason: str


@dataclass(frozen=True)
class Replay:
    accepted: int
    next_token: int


class CloudWindow:
    """Cloud side: verify a round only on the basis the verdicts so far left; each round once."""

    def __init__(self, rule: KeepRule = KeepRule(), keep: int | None = None) -> None:
        """`keep`: how many recent verdicts are remembered for replays (None: all; a verifier serving
        for hours bounds it by the rounds an edge may have in flight)."""
        self.rule, self.keep = rule, keep
        self.last: tuple[int, int, int, int] = (-1, 0, 0, 0)  # round id, drafted, accepted, next token
        self._done: dict[int, tuple[int, int]] = {}

    def admit(self, round_id: int, basis: Basis) -> Verify | Stale | Replay:
        if round_id in self._done:
            return Replay(*self._done[round_id])
        last_id, drafted, accepted, nxt = self.last
        if basis.parent != last_id:
            return Stale(f"round {round_id} continues round {basis.parent}, the last verified is {last_id}")
        if basis.assumed_next is None:
            return Verify(None)
        if last_id < 0:
            raise ValueError(f"round {round_id} assumes a verdict of the prompt")
        ahead = AheadDraft(last_id, drafted, basis.assumed_next, ())
        if not self.rule.keeps(ahead, last_id, accepted, nxt):
            return Stale(f"round {round_id} assumed round {last_id} kept; its verdict was {accepted}/{drafted}, "
                         f"next {nxt}")
        return Verify(self.rule.committed_next(ahead, nxt))

    def record(self, round_id: int, drafted: int, accepted: int, next_token: int) -> None:
        if round_id in self._done:
            raise ValueError(f"round {round_id} verified twice")
        self._done[round_id] = (accepted, next_token)
        self.last = (round_id, drafted, accepted, next_token)
        if self.keep is not None:
            while len(self._done) > self.keep:
                del self._done[next(iter(self._done))]
