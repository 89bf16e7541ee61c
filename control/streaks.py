"""Learning a hidden easy/hard acceptance regime from the rounds alone (a two-state hidden Markov model).

Where acceptance runs in streaks (easy text, then hard text, each lasting many rounds), the best
length depends on which regime is in force, and nobody observes it: what a policy can know is its
belief, P(easy | the outcomes so far), which is exactly what the streaky scenarios' oracle tracks
(control.regimes). Here the model behind that belief is learned from the (length, accepted) pairs:
per-position acceptance h_s(i) in each regime s and the per-round switch probabilities, by
Baum-Welch (EM over the forward-backward posteriors) on the rounds so far, refitted on a geometric
schedule and warm-started from the last fit, with the belief filtered forward each round in between.

A round of length L that accepted a tokens says: positions 1..a were accepted and, when a < L,
position a + 1 was rejected (later positions were never reached: censored), so its likelihood
in regime s is prod_{i <= a} h_s(i) * (1 - h_s(a + 1))^[a < L].

`evident` decides whether the two regimes are real: their log-likelihood must beat the one-regime
(pooled) model's by a margin no data without regimes reached, so there the pooled rule stays.
Regime 0 is the easier one (the higher mean acceptance over the reached positions).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# pseudo-rounds of the regime's own mean behind each of its per-position estimates: two free curves of K
# hazards gain several nats over one by chance (log n + 8.3 on auto's own rounds of a family at 1), so
# each position leans on its regime's mean until it is reached often (log n + 3.7 at 12, under the bar)
PSEUDO = 12.0
FLOOR = 1e-4  # acceptance stays in [FLOOR, 1 - FLOOR]: a log-likelihood is never -inf
LR_BASE = 4.0  # nats: the two regimes are used once they beat one by this + log n (evident)
MIN_STAY = 0.5  # a regime kept less often than this is no streak (and would swap the regimes' meaning)
# each refit also runs EM from a fresh split and keeps the likelier fit: warm-started from a fit made
# while the rounds showed no regimes yet, EM stays in that degenerate basin (two near-equal regimes) for
# good -- a streaky seed never switched its model on in 1,000 rounds while a fresh fit beat the pooled
# one by 20 nats at round 213 (docs/policies/auto-issue23.md, tenth session)
RESTART = True
EARLY_EVERY = 10  # refit every this many rounds while fewer than EARLY_UNTIL were seen (None: geometric only):
EARLY_UNTIL = 300  # the rounds before the regimes are found cost a streaky run 7-26 % each
# the regimes share one acceptance shape (fit_tied: logit h_s(i) = b_i +/- delta / 2): one parameter more
# than the pooled model instead of K + 2, so chance gains stay lower and the bar can be lower (TIED_BASE)
TIED = True
TIED_BASE = 3.0  # nats over log n the tied model must gain to be evident (chance gains reached 2.2 on random plays)
TIED_PLAY = False  # True: play the tied fit too (streaky, 20 seeds: worst seed 3.69 -> 3.95 %); False: the free fit (fit)
TIED_RIDGE = 0.5  # logit precision pulling each shared b_i toward their weighted mean (an unreached position borrows it)


@dataclass
class RegimeFit:
    """`hazard[s, i]`: P(accept position i + 1 | accepted i, regime s); `stay[s]`: P(regime s again next
    round); `loglik`: of the rounds it was fitted on; `belief`: P(regime 0) for the round after them."""

    hazard: np.ndarray
    stay: np.ndarray
    loglik: float
    belief: float

    def transitions(self) -> np.ndarray:
        return np.array([[self.stay[0], 1 - self.stay[0]], [1 - self.stay[1], self.stay[1]]])

    def tokens(self) -> np.ndarray:
        """(2, K): expected tokens of a round of length 1..K in each regime (accepted + the target's one)."""
        return 1.0 + np.cumsum(np.cumprod(self.hazard, axis=1), axis=1)

    def next_belief(self, belief: float, length: int, accepted: int) -> float:
        """P(regime 0) next round after a round of `length` that accepted `accepted`, from P(regime 0) before it."""
        like = np.exp(_round_loglik(self.hazard, np.array([length]), np.array([accepted]))[0])
        post = belief * like[0]
        norm = post + (1.0 - belief) * like[1]
        post = post / norm if norm > 0 else belief
        return float(post * self.stay[0] + (1.0 - post) * (1.0 - self.stay[1]))


def _masks(lengths: np.ndarray, accepted: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, K) indicators: position i accepted, position i rejected (reached and not accepted)."""
    pos = np.arange(k)[None, :]
    acc = pos < accepted[:, None]
    rej = (pos == accepted[:, None]) & (accepted[:, None] < lengths[:, None])
    return acc.astype(float), rej.astype(float)


def _round_loglik(hazard: np.ndarray, lengths: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """(n, 2): log P(outcome | regime) of each round."""
    acc, rej = _masks(lengths, accepted, hazard.shape[1])
    h = np.clip(hazard, FLOOR, 1 - FLOOR)
    return acc @ np.log(h).T + rej @ np.log1p(-h).T


def pooled_loglik(lengths: np.ndarray, accepted: np.ndarray, k: int) -> float:
    """The log-likelihood of one regime at its maximum (the per-position Kaplan-Meier acceptance)."""
    acc, rej = _masks(lengths, accepted, k)
    a, r = acc.sum(axis=0), rej.sum(axis=0)
    h = np.clip(a / np.maximum(a + r, 1.0), FLOOR, 1 - FLOOR)
    return float(a @ np.log(h) + r @ np.log1p(-h))


def _forward_backward(like: np.ndarray, stay: np.ndarray, start: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Posteriors of a two-state chain: (gamma (n, 2), expected switch counts (2, 2) [from, to], log-likelihood,
    filtered P(state 0) predicted for the round after the last). Plain floats: with two states a Python
    loop is faster than numpy's per-call overhead."""
    n = len(like)
    l0, l1 = like[:, 0].tolist(), like[:, 1].tolist()
    s0, s1 = float(stay[0]), float(stay[1])
    alpha = [0.0] * n
    scale = [0.0] * n
    p = start  # predicted P(state 0) before round t
    for t in range(n):
        a0, a1 = p * l0[t], (1.0 - p) * l1[t]
        z = a0 + a1
        if z <= 0:
            a0, a1, z = p, 1.0 - p, 1.0
        scale[t] = z
        f = a0 / z
        alpha[t] = f
        p = f * s0 + (1.0 - f) * (1.0 - s1)
    loglik = float(np.sum(np.log(np.maximum(scale, 1e-300))))
    gam0, gam1 = [0.0] * n, [0.0] * n
    x_00 = x_01 = x_10 = x_11 = 0.0  # expected switch counts (Python floats: numpy item access per round is slow)
    b0, b1 = 1.0, 1.0  # backward messages, scaled
    for t in range(n - 1, -1, -1):
        f = alpha[t]
        g0, g1 = f * b0, (1.0 - f) * b1
        z = g0 + g1
        gam0[t], gam1[t] = g0 / z, g1 / z
        if t == 0:
            break
        # the switch from round t - 1 to t: alpha(t - 1) x transition x like(t) x beta(t)
        fp = alpha[t - 1]
        e0, e1 = l0[t] * b0, l1[t] * b1
        x00, x01 = fp * s0 * e0, fp * (1 - s0) * e1
        x10, x11 = (1 - fp) * (1 - s1) * e0, (1 - fp) * s1 * e1
        zx = x00 + x01 + x10 + x11
        if zx > 0:
            x_00 += x00 / zx
            x_01 += x01 / zx
            x_10 += x10 / zx
            x_11 += x11 / zx
        nb0, nb1 = s0 * e0 + (1 - s0) * e1, (1 - s1) * e0 + s1 * e1
        zb = max(nb0, nb1)
        b0, b1 = (nb0 / zb, nb1 / zb) if zb > 0 else (1.0, 1.0)
    return np.ascontiguousarray(np.array([gam0, gam1]).T), np.array([[x_00, x_01], [x_10, x_11]]), loglik, p


def initial_fit(lengths: np.ndarray, accepted: np.ndarray, k: int) -> RegimeFit:
    """A start for EM: split the rounds by whether they accepted at least half their length."""
    acc, rej = _masks(lengths, accepted, k)
    good = accepted >= np.maximum(lengths / 2.0, 1.0)
    hazard = np.empty((2, k))
    for s, (rows, lean) in enumerate(((good, 0.9), (~good, 0.3))):  # where unseen: easy high, hard low
        a, r = acc[rows].sum(axis=0), rej[rows].sum(axis=0)
        hazard[s] = (a + lean) / (a + r + 1.0)
    return RegimeFit(np.clip(hazard, 0.02, 0.98), np.array([0.9, 0.9]), -np.inf, 0.5)


def fit(lengths, accepted, k: int, start: RegimeFit | None = None, iterations: int = 20,
        tol: float = 1e-4) -> RegimeFit:
    """Baum-Welch from `start` (or initial_fit). Each regime's per-position acceptance is its weighted
    Kaplan-Meier estimate with PSEUDO rounds of the same regime's other positions behind it (a position
    the hard regime hardly ever reaches borrows the hard regime's acceptance, not the easy one's, 0 or 1)."""
    lengths, accepted = np.asarray(lengths, np.int64), np.asarray(accepted, np.int64)
    if len(lengths) != len(accepted) or len(lengths) == 0:
        raise ValueError("streaks.fit: lengths and accepted must be non-empty and of one length")
    if (lengths < 1).any() or (lengths > k).any() or (accepted < 0).any() or (accepted > lengths).any():
        raise ValueError("streaks.fit: need 1 <= length <= k and 0 <= accepted <= length")
    acc, rej = _masks(lengths, accepted, k)
    cur = start if start is not None else initial_fit(lengths, accepted, k)
    hazard, stay = cur.hazard.copy(), cur.stay.copy()
    prior = 0.5  # the first fitted round's regime is unknown
    last = -np.inf
    for _ in range(iterations):
        like = np.exp(_round_loglik(hazard, lengths, accepted))
        gamma, xi, loglik, _ = _forward_backward(like, stay, prior)
        wa, wr = gamma.T @ acc, gamma.T @ rej
        # a position a regime rarely reaches borrows that regime's acceptance at the other positions
        pool = (wa.sum(axis=1, keepdims=True) - wa + 1.0) / ((wa + wr).sum(axis=1, keepdims=True) - wa - wr + 2.0)
        hazard = (wa + PSEUDO * pool) / (wa + wr + PSEUDO)
        out = xi.sum(axis=1)
        stay = np.clip((np.diag(xi) + 1.0) / (out + 2.0), MIN_STAY, 0.999)
        if loglik - last < tol * max(1.0, abs(loglik)):
            break
        last = loglik
    like = np.exp(_round_loglik(hazard, lengths, accepted))
    _, _, loglik, belief = _forward_backward(like, stay, prior)
    reached = acc + rej
    if _mean_acceptance(hazard[1], reached) > _mean_acceptance(hazard[0], reached):
        hazard, stay, belief = hazard[::-1].copy(), stay[::-1].copy(), 1.0 - belief
    return RegimeFit(hazard, stay, loglik, belief)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p) -> np.ndarray:
    """Log-odds of a probability kept off 0 and 1 (a hazard of exactly 0 or 1 has no logit)."""
    p = np.clip(p, 0.02, 0.98)
    return np.log(p / (1 - p))


_HALF = np.array([[0.5], [-0.5]])  # regime 0 (easy) sits delta / 2 above the shared shape, regime 1 below


def _tied_mstep(wa: np.ndarray, wr: np.ndarray, b: np.ndarray, delta: float, steps: int = 4) -> tuple[np.ndarray, float]:
    """Weighted logistic fit of the shared shape b (K) and the regimes' logit distance delta, by
    alternating Newton steps (the 2 x K cells are a few dozen numbers, no solver needed)."""
    n = wa + wr
    for _ in range(steps):
        w = n.sum(axis=0)
        bbar = float(b @ w / w.sum()) if w.sum() > 0 else 0.0
        p = _sigmoid(b[None, :] + _HALF * delta)
        g = (wa - n * p).sum(axis=0) - TIED_RIDGE * (b - bbar)
        b = b + g / ((n * p * (1 - p)).sum(axis=0) + TIED_RIDGE)
        p = _sigmoid(b[None, :] + _HALF * delta)
        gd = float(((wa - n * p) * _HALF).sum()) - 0.01 * delta
        delta = float(np.clip(delta + gd / (float((n * p * (1 - p) * _HALF ** 2).sum()) + 0.01), -12.0, 12.0))
    return b, delta


def fit_tied(lengths, accepted, k: int, start: RegimeFit | None = None, iterations: int = 20,
             tol: float = 1e-4) -> RegimeFit:
    """Baum-Welch for two regimes that share one acceptance shape: logit h_s(i) = b_i + delta / 2 (easy)
    or - delta / 2 (hard). Easy text moves every position's acceptance the same way, and a test with one
    parameter more than the pooled model is not passed by chance as often as two free curves."""
    lengths, accepted = np.asarray(lengths, np.int64), np.asarray(accepted, np.int64)
    acc, rej = _masks(lengths, accepted, k)
    if start is not None:
        lg = _logit(start.hazard)
        b, delta, stay = lg.mean(axis=0), float(lg[0].mean() - lg[1].mean()), start.stay.copy()
    else:  # the pooled shape, the regimes apart by what the first position (every round reaches it) shows
        a, r = acc.sum(axis=0), rej.sum(axis=0)
        b = _logit((a + 0.5) / (a + r + 1.0))
        l1 = _logit(initial_fit(lengths, accepted, k).hazard[:, 0])
        delta, stay = float(np.clip(l1[0] - l1[1], 0.5, 6.0)), np.array([0.9, 0.9])
    last = -np.inf
    for _ in range(iterations):
        like = np.exp(_round_loglik(_sigmoid(b[None, :] + _HALF * delta), lengths, accepted))
        gamma, xi, loglik, _ = _forward_backward(like, stay, 0.5)
        b, delta = _tied_mstep(gamma.T @ acc, gamma.T @ rej, b, delta)
        stay = np.clip((np.diag(xi) + 1.0) / (xi.sum(axis=1) + 2.0), MIN_STAY, 0.999)
        if loglik - last < tol * max(1.0, abs(loglik)):
            break
        last = loglik
    hazard = _sigmoid(b[None, :] + _HALF * delta)
    _, _, loglik, belief = _forward_backward(np.exp(_round_loglik(hazard, lengths, accepted)), stay, 0.5)
    if delta < 0:
        hazard, stay, belief = hazard[::-1].copy(), stay[::-1].copy(), 1.0 - belief
    return RegimeFit(hazard, stay, loglik, belief)


def _mean_acceptance(h: np.ndarray, reached: np.ndarray) -> float:
    w = reached.sum(axis=0)
    return float(h @ w / max(w.sum(), 1.0))


def gain_over_pooled(fitted: RegimeFit, lengths, accepted, k: int) -> float:
    """How many nats more likely the rounds are under the two regimes than under one."""
    return fitted.loglik - pooled_loglik(np.asarray(lengths, np.int64), np.asarray(accepted, np.int64), k)


def evident(gain: float, n: int, active: bool = False, base: float | None = None) -> bool:
    """Whether a gain of `gain` nats over n rounds shows two regimes: above LR_BASE + log n (on `auto`'s
    own rounds without regimes -- one run per cell of families, jitter and non-affine, 232 runs of 1,000
    rounds fitted every 10th -- the largest gain was log n + 3.7 nats, while streaky rounds pass the bar
    within ~80 rounds (median); BIC's half a log n per parameter waited 200-500 rounds, most of a short
    run). Once shown, the regimes stay until the gain falls below half of it (a refit that merely dips
    does not flip the rule back and forth)."""
    bar = (LR_BASE if base is None else base) + np.log(max(n, 2))
    return bool(gain > (0.5 * bar if active else bar))


class RegimeLearner:
    """The rounds so far, the current two-regime fit and the belief it gives for the next round."""

    def __init__(self, k: int, first_fit: int = 30, growth: float = 1.25, window: int = 2000):
        self.k, self.first_fit, self.growth, self.window = k, first_fit, growth, window
        self.lengths: list[int] = []
        self.accepted: list[int] = []
        self.model: RegimeFit | None = None
        self.tied: RegimeFit | None = None  # the tied fit, where it only decides (TIED, not TIED_PLAY)
        self.active = False  # the two-regime model is clearly better than the pooled one
        self.hinted = False  # ... or better by half the margin: regimes likely, not yet shown (auto._streaky)
        self.belief = 0.5
        self.seen = 0  # rounds observed in all (the window keeps the last `window` of them)
        self.next_fit = first_fit  # refit when `seen` reaches this

    def observe(self, length: int, accepted: int) -> None:
        length = min(max(int(length), 1), self.k)
        accepted = min(max(int(accepted), 0), length)
        self.lengths.append(length)
        self.accepted.append(accepted)
        if len(self.lengths) > self.window:
            del self.lengths[0], self.accepted[0]
        n = len(self.lengths)
        self.seen += 1
        if self.model is not None:
            self.belief = self.model.next_belief(self.belief, length, accepted)
        if self.seen >= self.next_fit:
            # geometric while the window fills, then every quarter window: a long-lived edge keeps refitting
            # (a schedule on the window's own length would stop once it is full)
            self.next_fit = max(self.seen + 5, min(int(self.seen * self.growth), self.seen + self.window // 4))
            if EARLY_EVERY is not None and self.seen < EARLY_UNTIL:
                self.next_fit = min(self.next_fit, self.seen + EARLY_EVERY)
            lens, accs = np.array(self.lengths), np.array(self.accepted)
            base = TIED_BASE if TIED else None
            if TIED and not TIED_PLAY:
                # the tied fit decides; the free one is fitted only to be played (no more EM than before)
                self.tied = self._refit(fit_tied, self.tied, lens, accs)
                gain = gain_over_pooled(self.tied, lens, accs, self.k)
                self.active = evident(gain, n, self.active, base)
                if self.active:
                    self.model = self._refit(fit, self.model, lens, accs)
            else:
                self.model = self._refit(fit_tied if TIED else fit, self.model, lens, accs)
                gain = gain_over_pooled(self.model, lens, accs, self.k)
                self.active = evident(gain, n, self.active, base)
            if self.model is not None:
                self.belief = self.model.belief
            self.hinted = evident(gain, n, True, base)

    def _refit(self, fitter, last: RegimeFit | None, lens: np.ndarray, accs: np.ndarray) -> RegimeFit:
        """EM warm-started from the last fit and, with RESTART, from a fresh split: the likelier of the two."""
        model = fitter(lens, accs, self.k, last)
        if RESTART and last is not None:
            fresh = fitter(lens, accs, self.k)
            model = fresh if fresh.loglik > model.loglik else model
        return model

    def expected_tokens(self) -> np.ndarray | None:
        """Expected tokens of lengths 1..K next round under the belief, or None while no regimes are evident."""
        if not self.active or self.model is None:
            return None
        t = self.model.tokens()
        return self.belief * t[0] + (1.0 - self.belief) * t[1]

    # --- persistence (a policy snapshot): the rounds as codes length * (k + 1) + accepted, and the fit
    def state(self) -> dict:
        m = self.model
        return {"rounds": [L * (self.k + 1) + a for L, a in zip(self.lengths, self.accepted)],
                "active": bool(self.active), "belief": float(self.belief), "next_fit": self.next_fit,
                "seen": self.seen,
                "fit": None if m is None else {"hazard": m.hazard.ravel().tolist(), "stay": m.stay.tolist(),
                                               "loglik": m.loglik, "belief": m.belief}}

    def load(self, s: dict) -> None:
        """Raises ValueError naming the field that is out of range; nothing is applied then."""
        rounds = s["rounds"]
        if not isinstance(rounds, list) or len(rounds) > self.window:
            raise ValueError(f"regimes.rounds must be a list of at most {self.window} codes")
        lengths, accepted = [], []
        for c in rounds:
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c % (self.k + 1) <= c // (self.k + 1) <= self.k \
                    or c // (self.k + 1) < 1:
                raise ValueError(f"regimes.rounds: {c!r} is no round code of max length {self.k}")
            lengths.append(c // (self.k + 1))
            accepted.append(c % (self.k + 1))
        try:  # older snapshots have no `seen`: the rounds they kept
            belief, next_fit, seen = float(s["belief"]), int(s["next_fit"]), int(s.get("seen", len(lengths)))
        except (TypeError, ValueError, OverflowError):
            raise ValueError("regimes.belief, regimes.next_fit and regimes.seen must be numbers") from None
        if not 0.0 <= belief <= 1.0 or not len(lengths) <= seen <= 10 ** 12 \
                or not 0 <= next_fit <= seen + self.window:
            raise ValueError("regimes.belief must be in [0, 1], regimes.seen a count of at least the rounds kept "
                             "and regimes.next_fit within a window of it")
        model = None
        if s["fit"] is not None:
            f = s["fit"]
            hazard = np.array(f["hazard"], dtype=float).reshape(2, self.k)
            stay = np.array(f["stay"], dtype=float).reshape(2)
            fb, ll = float(f["belief"]), float(f["loglik"])
            if not (np.all((hazard >= 0) & (hazard <= 1)) and np.all((stay >= 0) & (stay <= 1)) and 0 <= fb <= 1
                    and (np.isfinite(ll) or ll == -np.inf)):
                raise ValueError("regimes.fit: acceptance, stay and belief must lie in [0, 1]")
            model = RegimeFit(hazard, stay, ll, fb)
        self.lengths, self.accepted, self.model = lengths, accepted, model
        self.tied = None  # not kept either: a learner loaded over a used one must not warm-start from its history
        self.active, self.belief, self.next_fit = bool(s["active"]) and model is not None, belief, next_fit
        self.seen = seen
        self.hinted = self.active  # not kept: the next refit says again
