"""A per-token acceptance signal for the simulator, so per-token stop rules can be simulated.

Profiles hold C(L) and S(i) only: every round's tokens are alike, and a rule that stops on a token's
own signal (`auto`'s Dinkelbach stop, SpecDec++, hf-confidence) has nothing to read. Here each drafted
token at position i has its own acceptance probability pi_i = sigmoid(logit h(i) + spread z_i) around
its position's hazard h(i) = S(i) / S(i-1), with z an AR(1) walk along the round's positions (z_1 ~
N(0, 1), z_i = persistence z_(i-1) + sqrt(1 - persistence^2) e_i): hard and easy stretches persist
within a draft, as they do in text (live, a low head score predicts another). A token is accepted when
a uniform falls below pi_i, and the drafter reads pi_i plus Gaussian noise of sd `noise`, clipped into
(0, 1) (an acceptance head). With persistence the tokens that are reached are the easier ones, so the
realized survival is not the profile's S exactly: references come from the run (control's token-rule
bench takes the best fixed length in hindsight, every length played on the same tokens).

Draws are keyed by (seed, round index), so every policy run on a seed meets the same tokens in its
r-th round (common random numbers, as control.simulator pairs its runs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from control.types import ControlError

CLIP = 1e-3


@dataclass(frozen=True)
class TokenDraws:
    """One round's K tokens: whether each would be accepted once reached, and what the drafter reads."""

    accepted: np.ndarray  # bool per position
    signal: np.ndarray    # the head's predicted acceptance per position

    def accepted_of(self, drafted: int) -> int:
        """Accepted draft tokens of a round that drafted the first `drafted` tokens (the leading run)."""
        ok = self.accepted[:drafted]
        return int(drafted if ok.all() else np.argmin(ok))


@dataclass(frozen=True)
class TokenSignal:
    spread: float = 1.5       # sd of a token's acceptance around its position's hazard, in logits
    persistence: float = 0.7  # correlation of neighbouring tokens' difficulty within a draft
    noise: float = 0.1        # sd of the head's reading of a token's acceptance

    def __post_init__(self):
        for name, v, ok in (("spread", self.spread, self.spread >= 0), ("noise", self.noise, self.noise >= 0),
                            ("persistence", self.persistence, 0 <= self.persistence < 1)):
            if not (np.isfinite(v) and ok):
                raise ControlError(f"token signal: {name} out of range, got {v}")

    def draws(self, survival: np.ndarray, seed: int, r: int) -> TokenDraws:
        s = np.asarray(survival, dtype=float)
        h = np.clip(s / np.concatenate([[1.0], s[:-1]]), CLIP, 1.0 - CLIP)
        rng = np.random.default_rng([seed, 19, r])
        e = rng.standard_normal(len(h))
        z = np.empty(len(h))
        z[0] = e[0]
        for i in range(1, len(h)):
            z[i] = self.persistence * z[i - 1] + np.sqrt(1.0 - self.persistence ** 2) * e[i]
        pi = 1.0 / (1.0 + np.exp(-(np.log(h / (1.0 - h)) + self.spread * z)))
        accepted = rng.random(len(h)) < pi
        signal = np.clip(pi + self.noise * rng.standard_normal(len(h)), CLIP, 1.0 - CLIP)
        return TokenDraws(accepted, signal)
