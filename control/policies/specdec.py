"""SpecDec++ (Huang et al., 2024): draft up to the maximum length and stop once the predicted
probability that some drafted token is rejected, 1 - prod_i p_i, exceeds a threshold, where p_i is
an acceptance head's predicted probability that the target keeps token i (stop_signal "acceptance").

`specdec++:H` keeps SpecDec++'s fixed threshold H. `specdec++-delay` is the same rule with the
delay-aware threshold of DESIGN.md section 2 (Dinkelbach view): h(d) = 1 - a / lambda*(d), with a
the marginal round compute per drafted token (slope of the profile's C(L)) and lambda*(d) = min_L
J(L, d) the best long-run ms/token at the round's delay: another token is worth drafting while its
expected yield, lambda* times P(all so far accepted), still pays for its cost a. A longer delay
makes tokens dearer (larger lambda*), so the rule drafts further before stopping.
"""
from __future__ import annotations

from control.policies.base import Policy
from control.profile import Profile
from control.theory import affine_fit, best_length
from control.types import ControlError, RoundContext

DEFAULT_THRESHOLD = 0.7


class SpecDecPolicy(Policy):
    """Fixed threshold H in [0, 1]: stop after token n once 1 - prod_{i<=n} p_i > H."""

    learns = False
    stop_signal = "acceptance"

    def __init__(self, threshold: float, max_length: int):
        super().__init__(max_length)
        if not 0.0 <= threshold <= 1.0:
            raise ControlError(f"specdec++ threshold must be in [0, 1], got {threshold}")
        self.h = float(threshold)
        self.spec = f"specdec++:{threshold:g}"
        self._all_accepted = 1.0  # predicted P(every token drafted so far this round is accepted)
        self._round_h = self.h

    def choose(self, ctx: RoundContext) -> int:
        return self.max_length

    def threshold(self, ctx: RoundContext) -> float:
        return self.h

    def should_stop(self, ctx: RoundContext, position: int, confidence: float) -> bool:
        if position <= 1:  # a new round
            self._all_accepted = 1.0
            self._round_h = self.threshold(ctx)
        self._all_accepted *= min(1.0, max(0.0, float(confidence)))
        return 1.0 - self._all_accepted > self._round_h


class DelaySpecDecPolicy(SpecDecPolicy):
    """SpecDec++'s rule with h(d) = clip(1 - a / lambda*(d), 0, 1) from the profile."""

    def __init__(self, profile: Profile, max_length: int):
        super().__init__(1.0, max_length)
        self.spec = "specdec++-delay"
        self.profile = profile.truncated(max_length)
        self.slope_ms = affine_fit(self.profile.compute_ms)[0]

    def threshold(self, ctx: RoundContext) -> float:
        lam = best_length(self.profile, ctx.delay_ms)[1]
        if not lam > 0:
            return 0.0
        return min(1.0, max(0.0, 1.0 - self.slope_ms / lam))
