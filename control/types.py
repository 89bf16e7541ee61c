"""What a policy sees before a round and learns after it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable


@dataclass(frozen=True)
class RoundContext:
    """`delay_ms`: one-way delay known before the round (the edge's latest measurement,
    the true value in simulation). `channel_state`: an observable channel state, if any.
    `stops`: this round's draft passes the policy's per-token stop rule (the drafter has the
    signal the policy's `stop_signal` names); a policy whose rule is optional (`auto`) then
    chooses a cap for the rule to cut, and a fixed length otherwise."""

    delay_ms: float = 0.0
    channel_state: Hashable | None = None
    stops: bool = False


@dataclass(frozen=True)
class RoundOutcome:
    """`round_ms`: the whole round including the network (~ C(L) + 2d).
    `accepted`: accepted draft tokens 0..L, the target's own token excluded."""

    length: int
    accepted: int
    round_ms: float
    context: RoundContext = RoundContext()

    @property
    def tokens(self) -> int:
        return self.accepted + 1

    @property
    def compute_ms(self) -> float:
        """Round time without the network: compute does not depend on the delay."""
        return max(0.0, self.round_ms - 2.0 * self.context.delay_ms)


class ControlError(ValueError):
    """Bad profile, policy spec or snapshot; the message names the offending field."""
