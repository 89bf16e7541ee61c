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
    `accepted`: accepted draft tokens 0..L, the target's own token excluded.
    `context`: what the policy was told before the round.
    `measured_compute_ms`: the round's compute as the nodes timed it (edge drafting and queue, the
    verdict's verify and queue times), where known: round time minus twice a told delay carries the
    link's jitter (a told median of recent delays is not the delay this round paid)."""

    length: int
    accepted: int
    round_ms: float
    context: RoundContext = RoundContext()
    measured_compute_ms: float | None = None

    @property
    def tokens(self) -> int:
        return self.accepted + 1

    @property
    def compute_ms(self) -> float:
        """Round time without the network: the measured compute where given, else round time minus
        twice the told delay. Compute does not depend on the delay."""
        if self.measured_compute_ms is not None:
            return max(0.0, min(self.measured_compute_ms, self.round_ms))
        return max(0.0, self.round_ms - 2.0 * self.context.delay_ms)

    @property
    def realized_delay_ms(self) -> float:
        """The one-way delay this round paid: (round - compute) / 2 (the told one without a measurement)."""
        if self.measured_compute_ms is None:
            return self.context.delay_ms
        return max(0.0, self.round_ms - self.compute_ms) / 2.0


class ControlError(ValueError):
    """Bad profile, policy spec or snapshot; the message names the offending field."""
