"""Policies that need no learning, or only a trivial rule: fixed, oracle, static,
and the HF transformers heuristic and confidence schedules."""
from __future__ import annotations

from control.policies import checks
from control.policies.base import Policy
from control.profile import Profile
from control.theory import best_length
from control.types import ControlError, RoundContext, RoundOutcome


class FixedPolicy(Policy):
    learns = False

    def __init__(self, length: int, max_length: int):
        super().__init__(max_length)
        if not 1 <= length <= max_length:
            raise ControlError(f"policy 'fixed:{length}': length must be in 1..{max_length} (the maximum draft length)")
        self.length = length
        self.spec = f"fixed:{length}"

    def choose(self, ctx: RoundContext) -> int:
        return self.length


class TargetOnlyPolicy(Policy):
    """No drafting: every round is one target step (length 0). The reference decoder and the
    one-round-trip-per-token baseline, through exactly the same round protocol as speculation."""

    spec = "target-only"
    learns = False

    def choose(self, ctx: RoundContext) -> int:
        return 0


class OraclePolicy(Policy):
    """Knows the profile and the true delay: best fixed length for this round's delay."""

    spec = "oracle"
    learns = False

    def __init__(self, profile: Profile, max_length: int):
        super().__init__(max_length)
        self.profile = profile.truncated(max_length)

    def choose(self, ctx: RoundContext) -> int:
        return best_length(self.profile, ctx.delay_ms)[0]


class StaticPolicy(Policy):
    """Tuned once for delay D (the best length there), then kept whatever happens."""

    learns = False

    def __init__(self, profile: Profile, delay_ms: float, max_length: int):
        super().__init__(max_length)
        self.spec = f"static:{delay_ms:g}"
        self.length = best_length(profile.truncated(max_length), delay_ms)[0]

    def choose(self, ctx: RoundContext) -> int:
        return self.length


class HFHeuristicPolicy(Policy):
    """transformers' "heuristic" schedule: +2 after a fully accepted round, else -1."""

    spec = "hf-heuristic"

    def __init__(self, max_length: int, start: int = 5):
        super().__init__(max_length)
        self.length = self.clamp(start)

    def choose(self, ctx: RoundContext) -> int:
        return self.length

    def observe(self, outcome: RoundOutcome) -> None:
        full = outcome.accepted >= outcome.length
        self.length = self.clamp(self.length + 2 if full else self.length - 1)

    def state(self) -> dict:
        return {"length": self.length}

    def load_state(self, state: dict) -> None:
        self.length = checks.integer(checks.field(state, "length"), "length", 1, self.max_length)


class ConfidencePolicy(Policy):
    """transformers' confidence threshold: draft up to K, stop when p(draft token) < threshold."""

    learns = False
    stop_signal = "confidence"

    def __init__(self, threshold: float, max_length: int):
        super().__init__(max_length)
        if not 0.0 <= threshold <= 1.0:
            raise ControlError(f"hf-confidence threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold
        self.spec = f"hf-confidence:{threshold:g}"

    def choose(self, ctx: RoundContext) -> int:
        return self.max_length

    def should_stop(self, ctx: RoundContext, position: int, confidence: float) -> bool:
        return confidence < self.threshold
