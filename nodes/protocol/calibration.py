"""A start-up calibration of the round compute (`edge --calibrate-rounds M`): before its first served
rounds are many, the edge times M rounds of every draft length 1..K on a prompt of its own, through the
real verifier, and gives each round's measured compute to its policies (`Policy.calibrate`).

Why: compute C(L) is the devices', not the traffic's, while acceptance is the traffic's. `auto` learns
both from scratch, and on a new edge over its first 200 rounds learning the compute is about half of
its gap to the oracle (told the compute: 1.25 -> 0.69 %; three calibration rounds per length: 0.80 %,
docs/policies/auto-issue23.md). The calibration's acceptance is not learned (its prompt is not the
traffic), and its first round is not used (it also prefilled the context on the verifier), nor a round
with a retry (its time is not the length's).
No transport here: the edge drives the sweep, the edge and the controller both call `usable`.
"""
from __future__ import annotations

from control import Policy, RoundContext
from schemas.messages import TimingEvent

MAX_CALIBRATION_ROUNDS = 20  # per length: --calibrate-rounds above this is refused
REQUEST_PREFIX = "calibration-"
# documentation-like text, the bundled pair's domain: a calibration round drafts what a served one would
PROMPT = ("The configuration file sets the number of worker processes, the port the server listens on, "
          "and the directory where logs are written. To change a value, edit the file and restart")


class CalibrationSweep(Policy):
    """Plays the length that still needs the most timed rounds (the shortest on a tie), so an early end
    (EOS, the request's token budget) leaves every length about equally covered. Not a served policy:
    the edge acts on it for its calibration requests only."""

    spec = "calibration"
    learns = False

    def __init__(self, max_length: int, rounds: int):
        super().__init__(max_length)
        if not 1 <= rounds <= MAX_CALIBRATION_ROUNDS:
            raise ValueError(f"calibration rounds must be in 1..{MAX_CALIBRATION_ROUNDS}, got {rounds}")
        self.rounds = rounds
        self.timed = [0] * max_length  # usable rounds timed per length
        self.total_ms = [0.0] * max_length  # their summed compute

    def choose(self, ctx: RoundContext) -> int:
        return min(range(1, self.max_length + 1), key=lambda L: (self.timed[L - 1], L))

    def record(self, length: int, compute_ms: float) -> None:
        if 1 <= length <= self.max_length:
            self.timed[length - 1] += 1
            self.total_ms[length - 1] += compute_ms

    def means(self) -> list[float | None]:
        """Mean compute per length (None where none was timed): what the start-up log line reports."""
        return [round(t / n, 3) if n else None for t, n in zip(self.total_ms, self.timed)]

    @property
    def done(self) -> bool:
        return min(self.timed) >= self.rounds

    def tokens_left(self) -> int:
        """New tokens a request needs to time what is left: every round at most L + 1, plus its first."""
        return sum((L + 1) * max(0, self.rounds - n) for L, n in enumerate(self.timed, start=1)) + self.max_length + 1


def usable(ev: TimingEvent) -> bool:
    """A calibration round whose compute is its length's: drafted, not the request's first (that one
    also prefilled), not resent with its context, answered at its first attempt."""
    return bool(ev.calibration) and ev.length >= 1 and ev.round > 0 and not ev.context_resent \
        and ev.attempt == 0 and ev.stall_ms == 0 and ev.tree_depth is None

