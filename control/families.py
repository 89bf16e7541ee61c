"""Generated profile families: policies are judged on pairs nobody tuned them on.

A family crosses an acceptance shape with a compute shape; each member is drawn
from the family's ranges with a seeded RNG, so the same command always tests
the same profiles and nobody picks them by hand.

Acceptance shapes (survival S(i) = prod of per-position hazards h(j)):
  low-flat     h constant in [0.30, 0.55]          (weak drafts)
  high-flat    h constant in [0.80, 0.95]          (strong drafts)
  heavy-head   h(1) in [0.30, 0.50], h(j>1) in [0.80, 0.95]  (the seed paper's pairs)
  steep        h(1) in [0.80, 0.95], falling by [0.80, 0.92] per position
Compute shapes (C(L) = draft_fixed + L draft_per_token + verify_fixed + (L+1) verify_per_token):
  cheap-draft      draft 0.5-5 ms/token, verify 20-80 ms + 0.5-3 ms/position
  expensive-draft  draft 30-80 ms/token, verify 40-90 ms + 1-5 ms/position (a Jetson-class edge)
`near-tie` members are redrawn until two lengths are within 1.5 % of each other
at some delay in 0..1000 ms: where a wrong choice costs little but is easy to make.

Kinds the shapes above do not contain (issue 23), each judged against its own oracle by
control.evaluation:
  non-affine   a compute shape plus a jump at a middle length L_j in 3..6 (a batch-shape or
               kernel change): C(L) += jump for L >= L_j, the jump 1-4 tokens' worth of
               compute; redrawn until J(L, d) has two local minima at some delay of DELAYS
               (a length a learner can lock on while a better one is never played)
  streaky      acceptance in a hidden easy / hard regime that persists across rounds (easy
               hazard 0.85-0.97, hard 0.15-0.45, each regime kept with probability 0.8-0.97
               per round): control.regimes; the oracle is the belief-MDP optimum
  jitter       (a scenario, control.simulator.jitter_scenario) the delay jitters per round
               (lognormal, rare 5x spikes) and the policy is told the median of the last five
  short        (a horizon) the families above over their first 200 rounds
"""
from __future__ import annotations

import numpy as np

from control.profile import Profile
from control.regimes import HiddenRegimes
from control.theory import ms_per_token

ACCEPTANCE = ("low-flat", "high-flat", "heavy-head", "steep")
COMPUTE = ("cheap-draft", "expensive-draft")
DELAYS = (0.0, 5.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


def _survival(shape: str, k: int, rng: np.random.Generator) -> np.ndarray:
    if shape == "low-flat":
        h = np.full(k, rng.uniform(0.30, 0.55))
    elif shape == "high-flat":
        h = np.full(k, rng.uniform(0.80, 0.95))
    elif shape == "heavy-head":
        h = np.full(k, rng.uniform(0.80, 0.95))
        h[0] = rng.uniform(0.30, 0.50)
    elif shape == "steep":
        h = rng.uniform(0.80, 0.95) * rng.uniform(0.80, 0.92) ** np.arange(k)
    else:
        raise ValueError(f"unknown acceptance shape {shape!r}")
    return np.cumprod(h)


def _compute(shape: str, k: int, rng: np.random.Generator, jump: bool = False) -> np.ndarray:
    L = np.arange(1, k + 1, dtype=float)
    if shape == "cheap-draft":
        d_tok, d_fix, v_fix, v_tok = rng.uniform(0.5, 5), rng.uniform(0, 2), rng.uniform(20, 80), rng.uniform(0.5, 3)
    elif shape == "expensive-draft":
        d_tok, d_fix, v_fix, v_tok = rng.uniform(30, 80), rng.uniform(0, 10), rng.uniform(40, 90), rng.uniform(1, 5)
    else:
        raise ValueError(f"unknown compute shape {shape!r}")
    c = d_fix + L * d_tok + v_fix + (L + 1) * v_tok
    if jump:
        c = c + np.where(L >= rng.integers(3, 7), rng.uniform(1.0, 4.0) * (d_tok + v_tok), 0.0)
    return c


def local_minima(profile: Profile, delay_ms: float) -> list[int]:
    """Lengths whose J(L, d) is below both neighbours' (1-based)."""
    j = np.concatenate([[np.inf], ms_per_token(profile, delay_ms), [np.inf]])
    return [i for i in range(1, len(j) - 1) if j[i] < j[i - 1] and j[i] < j[i + 1]]


def non_affine_family(acceptance: str, compute: str, members: int = 2, max_length: int = 8,
                      seed: int = 0) -> list[Profile]:
    """A compute shape with a jump at a middle length; each member has two local minima at some delay."""
    rng = np.random.default_rng([seed, 23, ACCEPTANCE.index(acceptance), COMPUTE.index(compute)])
    out = []
    while len(out) < members:
        p = Profile(f"non-affine/{acceptance}/{compute}#{len(out) + 1}", _compute(compute, max_length, rng, jump=True),
                    _survival(acceptance, max_length, rng))
        if any(len(local_minima(p, d)) >= 2 for d in DELAYS):
            out.append(p)
    return out


def streaky_family(compute: str, members: int = 3, max_length: int = 8, seed: int = 0) -> list[Profile]:
    """Acceptance in a hidden easy/hard regime that persists across rounds (Profile.regimes)."""
    rng = np.random.default_rng([seed, 29, COMPUTE.index(compute)])
    out = []
    for i in range(members):
        c = _compute(compute, max_length, rng)
        easy, hard = rng.uniform(0.85, 0.97), rng.uniform(0.15, 0.45)
        stay = rng.uniform(0.8, 0.97, 2)
        reg = HiddenRegimes(np.cumprod(np.array([[easy], [hard]]) * np.ones((2, max_length)), axis=1),
                            np.array([[stay[0], 1 - stay[0]], [1 - stay[1], stay[1]]]))
        out.append(Profile(f"streaky/{compute}#{i + 1}", c, reg.mixture(), reg))
    return out


def near_tie(profile: Profile, delays=DELAYS, within: float = 0.015) -> bool:
    for d in np.linspace(0, max(delays), 201):
        j = np.sort(ms_per_token(profile, d))
        if j[1] <= (1 + within) * j[0]:
            return True
    return False


def family(acceptance: str, compute: str, members: int = 3, max_length: int = 8, seed: int = 0,
           tie: bool = False) -> list[Profile]:
    rng = np.random.default_rng([seed, ACCEPTANCE.index(acceptance), COMPUTE.index(compute), int(tie)])
    out = []
    while len(out) < members:
        p = Profile(f"{acceptance}/{compute}{'/near-tie' if tie else ''}#{len(out) + 1}",
                    _compute(compute, max_length, rng), _survival(acceptance, max_length, rng))
        if not tie or near_tie(p):
            out.append(p)
    return out


def all_families(members: int = 3, max_length: int = 8, seed: int = 0) -> list[Profile]:
    """Every acceptance x compute shape, plus a near-tie set of each acceptance shape."""
    out = []
    for a in ACCEPTANCE:
        for c in COMPUTE:
            out += family(a, c, members, max_length, seed)
        out += family(a, COMPUTE[seed % 2], members, max_length, seed, tie=True)
    return out
