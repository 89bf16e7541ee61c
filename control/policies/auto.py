"""`auto`: the project's default policy — Thompson sampling on a structured model.

It gets no profile; it learns from what it observes, using structure the
bandits ignore:
  * every round reveals acceptance of positions 1..min(A+1, L) (censored), so
    the conditional acceptance h(i) = P(accept i | accepted i-1) is learned from
    all rounds whatever their length (Kaplan-Meier counts) and S(i) = prod h;
  * compute does not depend on the delay: C(L) = round_ms - 2 d is learned once
    (per-length means shrunk toward an affine fit across lengths) and reused at
    every delay, so drift costs no re-learning.
Each round it samples h(i) from (tempered) Beta posteriors and plays argmin_L (C(L) + 2d)/B(L)
at the current delay, among the posterior-mean leader and its two neighbours, one length longer
while the next position is barely observed and an upper quantile of it says that pays. With
an observable channel state it estimates the chain in wall-clock time (per-state delay, exit
rates and jump targets, per-state compute scale) and plays the semi-Markov optimum instead:
the per-state best length when states hold for many rounds, one shared length when they flip
within a round or two (control.markov), with the same one step of optimism.

Where the drafter has an acceptance head (RoundContext.stops), `auto` also stops per token: one
length per round cannot draft far on an easy stretch and stop at once on a hard one (live, with
the bundled pair's head, the rule is 5.7-8.5 % below the best fixed length at 50-150 ms). It drafts up
to the maximum and stops after token n once lambda * P(1..n accepted) * p_n < a (DESIGN.md
section 2's Dinkelbach rule, the next token's acceptance predicted by this one's: acceptance runs
in streaks), with a its learned compute per drafted token and lambda the ms/token its own recent
rounds would take at this round's delay -- each round a Dinkelbach step, so it settles at the
rule's optimum without a profile. STOP_LOOKAHEAD (off) looks past the next token instead
(_drafting_on_pays). SpecDec++ with the delay-aware threshold needs the profile.
"""
from __future__ import annotations

import numpy as np

from control.markov import clock_policy_iteration
from control.policies import checks
from control.policies.base import Policy
from control.regimes import HiddenRegimes, solve_belief
from control.streaks import RegimeLearner
from control.types import ControlError, RoundContext, RoundOutcome

PRIOR_STRENGTH = 2.0
POOL_STRENGTH_MAX = 30.0  # at most this many pseudo-rounds of the pool behind a later position (_pool_strength)
POOL_PRIOR = 4.0  # pseudo-rounds behind the pooled later-position acceptance
OPTIMISM_MIN = 60.0  # the position after the choice, reached by fewer rounds, is judged optimistically ...
OPTIMISM_Z = 2.0     # ... at the posterior mean + this many standard deviations (AutoPolicy._optimistic_next)
OPTIMISM_STOP_Z = None  # ... and not once its own rounds' upper bound at this z is below what it needs (_clearly_short)
OPTIMISM_STOP_MIN = 0  # ... once at least this many rounds reached it (off: z 1, min 20 helped families,
# jitter and short but raised a non-affine and a streaky seed, docs/policies/auto-issue23.md)
OPTIMISM_STOP_STREAKS = False  # ... and that stop is suspended while acceptance persists by streak (_streaky;
# off: streaky's worst seed is not moved, the streaks are not visible yet where the stop acts)
COMPUTE_SPREAD_FLOOR = 0.02  # compute draws spread at least this fraction of the mean compute
SLOPE_PRIOR_ROUNDS = 3.0  # rounds away from the most played length before the fitted slope outweighs the guess
SHRINK_ROUNDS = 30.0  # per-length compute means need this many rounds to outweigh the affine fit
DEFAULT_ACCEPT = 0.7
NEIGHBOUR_MIN = 3  # rounds each neighbour of the leader is played before draws alone decide (AutoPolicy._leader)
NEIGHBOUR_CLEAR = None  # ... unless, played once, its J is this fraction above the leader's (None: off;
# 0.2 cleared short and streaky but locked two non-affine seeds on length 1, docs/policies/auto-issue23.md)
TEMPER = 0.6  # posterior deviations are scaled by this: less dithering among near-equal lengths
RECENT_ROUNDS = 100.0  # the stop rule's lambda: ms/token of about this many recent rounds (a moving average)
DELAY_ROUNDS = 200.0  # realized - told delay: a moving mean over about this many rounds (AutoPolicy.delay_bias)
EXPLORE_AFTER = 40  # rounds before _explore: earlier, every bound is loose and the leader itself unsettled
EXPLORE_PLAYS = None  # _explore tries a length only while played fewer times than this (None: always; off,
# docs/policies/auto-issue23.md: 8 helped short and non-affine but raised a families seed)
OPENING_MIDDLE = False  # the first round at the middle length, the second at the leader it gives (choose;
# off: the guessed slope misleads expensive drafters at low delay, short's worst seed 4.41 -> 7.16 %)
REVEAL_RATE = None  # a short choice (length <= REVEAL_LEADER) is lengthened by REVEAL_STEP while the rounds played
REVEAL_LEADER = 2   # past it number fewer than this times sqrt(rounds), at most REVEAL_MAX (_reveal; None: off)
REVEAL_STEP = 2     # ... so positions past 2 are seen before the regime fit must decide (streaky's worst seed
REVEAL_MAX = 40     # played lengths 1-2 for ~300 rounds: nothing could see its streaks), and only where the
REVEAL_COST = 0.1   # longer round costs at most this fraction more, every drafted token rejected (cheap),
REVEAL_AFTER = 0    # and only after this many rounds (the budget counts from here)
REVEAL_BOUND = "cost"  # "cost": the REVEAL_COST bound above; "loss": instead, the longer length's ms/token
REVEAL_MARGIN = 0.05   # with positions L+1.. at their upper quantile (OPTIMISM_Z) is within this fraction
                       # of L's at the posterior means (_reveal_pays: a bound on the expected loss); "both":
                       # the two together (the loss bound alone lets expensive drafters at 0-20 ms reveal)
EXPLORE_Z = 2.0  # a length off the leader's neighbours is tried while its lower bound beats the leader (_explore)
STREAK_PRIOR = 8.0  # pseudo-rounds of the pooled acceptance behind each streak state's own (AutoPolicy._posterior)
PERSIST_Z = 3.0  # the streak states are used once they differ from the pool by this many deviations (_persists)
STREAKS = 3  # the last round: first token rejected, a later one rejected, all accepted
REGIME_OPTIMISM = True  # the belief-MDP's length also gets the one step of optimism (_optimistic_next): the
# table is solved for the fitted regimes, whose hazards past the lengths played are guesses, so without it a
# streaky seed locked on length 3 where the easy regime's best is 7 (+6.4 %; docs/policies/auto-issue23.md)
REGIME_GRID = 51  # beliefs the learned belief-MDP is solved on (AutoPolicy._regime_table)
STOP_LOOKAHEAD = False  # the stop rule looks past the next token, predicting by the learned hazard (_drafting_on_pays;
# off: 0.54 -> 0.33 % on the simulated token signal, but 0.3-1.8 % slower live on the bundled pair in two runs,
# docs/policies/auto-issue23.md "Seventh session")
CALIBRATE_MAX = 20  # compute samples of a length beyond which a calibration round adds nothing (calibrate)
RESOLVE_DELAY = 0.05  # the belief-MDP is solved again once the delay moves this fraction (or a refit)


class AutoPolicy(Policy):
    spec = "auto"
    stop_signal = "acceptance"
    stop_optional = True  # without a head: fixed lengths

    def __init__(self, max_length: int, seed: int = 0, use_state: bool = True):
        super().__init__(max_length)
        self.use_state = use_state  # False: `auto-blind`, which ignores an observable channel state
        if not use_state:
            self.spec = "auto-blind"
        k = max_length
        self.seed = int(seed) & 0x7FFF_FFFF
        self.n_obs = 0
        self.n_chosen = 0
        self.accepted = np.zeros(k)      # rounds where position i was accepted
        self.at_risk = np.zeros(k)       # rounds where position i was drafted and reached
        self.arm_n = np.zeros(k)
        self.arm_sum = np.zeros(k)       # sum of compute ms per length
        self.arm_sq = np.zeros(k)        # sum of squared compute ms per length (its spread)
        self.states: dict[str, dict] = {}  # per channel state: n, delay_sum, compute_sum, predicted_sum
        self.transitions: dict[str, dict[str, float]] = {}
        self.prev_state: str | None = None
        self.recent = np.zeros(3)  # moving sums of [rounds, compute ms, tokens] (the stop rule's lambda)
        self.delay_gap = np.zeros(2)  # moving sums of [rounds, realized - told one-way delay ms]
        self.streak_accepted = np.zeros((STREAKS, k))  # acceptance counts by the previous round's streak state
        self.streak_at_risk = np.zeros((STREAKS, k))
        self.last_streak = -1  # the streak state of the last round observed (-1: none yet)
        self._all_accepted, self._bar = 1.0, 0.0  # within a round of the stop rule (a per-round copy)
        self._hazard_logit: np.ndarray | None = None  # the round's learned hazard, in logits (STOP_LOOKAHEAD)
        self.regimes = RegimeLearner(k)  # a hidden easy/hard acceptance regime, learned (control.streaks)
        self._table: tuple | None = None  # (fit, delay, best length per belief) of the learned belief-MDP
        self._estimate: tuple[bytes, np.ndarray] | None = None  # compute_estimate's last (arms, value)

    # --- learning ----------------------------------------------------------
    def observe(self, o: RoundOutcome) -> None:
        if o.length < 1:
            return  # a target-only round says nothing about drafting
        L = min(o.length, self.max_length)
        a = min(o.accepted, L)
        reached = min(a + 1, L)
        self.at_risk[:reached] += 1
        self.accepted[:a] += 1
        if self.last_streak >= 0:
            self.streak_at_risk[self.last_streak, :reached] += 1
            self.streak_accepted[self.last_streak, :a] += 1
        self.last_streak = 0 if a == 0 else (2 if a >= L else 1)
        self.regimes.observe(L, a)
        c = o.compute_ms
        self.delay_gap = self.delay_gap * (1.0 - 1.0 / DELAY_ROUNDS) + \
            np.array([1.0, o.realized_delay_ms - o.context.delay_ms])
        predicted = float(self.compute_estimate()[L - 1]) if self.arm_n.any() else c
        self.arm_n[L - 1] += 1
        self.arm_sum[L - 1] += c
        self.arm_sq[L - 1] += c * c
        self.recent = self.recent * (1.0 - 1.0 / RECENT_ROUNDS) + np.array([1.0, c, o.tokens])
        self.n_obs += 1
        self.n_chosen = 0
        key = None if o.context.channel_state is None or not self.use_state else \
            str(o.context.channel_state)[:checks.MAX_KEY_LEN]
        if key is not None and (key in self.states or len(self.states) < checks.MAX_TABLE):
            st = self.states.setdefault(key, {"n": 0.0, "delay_sum": 0.0, "compute_sum": 0.0, "predicted_sum": 0.0})
            st["n"] += 1
            st["delay_sum"] += o.context.delay_ms
            st["compute_sum"] += c
            st["predicted_sum"] += predicted
            if self.prev_state is not None:
                row = self.transitions.setdefault(self.prev_state, {})
                row[key] = row.get(key, 0.0) + 1
            self.prev_state = key

    def calibrate(self, length: int, compute_ms: float) -> None:
        """A compute sample of `length` timed before serving, counted as a played round's compute (not
        once the length has CALIBRATE_MAX samples: a calibration never outweighs served rounds).
        Once every length has one, the opening (two rounds that exist to pin the compute slope) is
        skipped: told C(L) by 3 such rounds per length, the short horizon's mean gap fell 1.25 -> 0.80 %
        (docs/policies/auto-issue23.md, "Eighth session")."""
        c = float(compute_ms)
        if not 1 <= int(length) <= self.max_length or not np.isfinite(c) or c < 0:
            raise ControlError(f"calibrate: length must be in 1..{self.max_length} and compute a finite ms >= 0, "
                               f"got {length!r}, {compute_ms!r}")
        if self.arm_n[int(length) - 1] >= CALIBRATE_MAX:  # known already: calibration only fills in the unknown
            return
        self.arm_n[int(length) - 1] += 1
        self.arm_sum[int(length) - 1] += c
        self.arm_sq[int(length) - 1] += c * c

    def compute_known(self) -> bool:
        """Every length's compute has been seen (played or calibrated): no opening needed."""
        return bool((self.arm_n > 0).all())

    # --- estimates ---------------------------------------------------------
    def compute_estimate(self) -> np.ndarray:
        """C(L): per-length means shrunk toward a count-weighted affine fit (compute_slope), as far as the
        played lengths' means lie on it: where they stray from it by more than their noise explains (a
        jump at some length: a batch-shape or kernel change), each length's own mean counts for more
        (empirical Bayes: SHRINK_ROUNDS at most, noise variance / spread around the fit otherwise).
        A round asks for it twice on the same arms (choose, then observe before counting the round),
        so the last value is kept, keyed by the arms' contents."""
        key = self.arm_n.tobytes() + self.arm_sum.tobytes() + self.arm_sq.tobytes()
        if self._estimate is None or self._estimate[0] != key:
            self._estimate = (key, self._compute_estimate())
        return self._estimate[1].copy()

    def _compute_estimate(self) -> np.ndarray:
        L, seen, mean = self._arm_means()
        if not seen.any():
            return L.copy()
        slope = self.compute_slope()
        icept = float(np.average(mean[seen] - slope * L[seen], weights=np.sqrt(self.arm_n[seen])))
        fit = np.maximum(icept + slope * L, 1e-6)
        shrink = SHRINK_ROUNDS
        var = self._compute_var()
        if seen.sum() >= 3 and var > 0:
            spread = float(np.mean((mean[seen] - fit[seen]) ** 2 - var / self.arm_n[seen]))
            if spread > 0:
                shrink = min(SHRINK_ROUNDS, var / spread)
        return (self.arm_n * mean + shrink * fit) / (self.arm_n + shrink)

    def _compute_var(self) -> float:
        """The per-round spread of compute around each length's mean (pooled over lengths played twice)."""
        n = self.arm_n
        many = n >= 2
        if not many.any():
            return 0.0
        return max(float((self.arm_sq[many] - self.arm_sum[many] ** 2 / n[many]).sum() / (n[many] - 1).sum()), 0.0)

    def delay_bias(self) -> float:
        """How much longer the delay a round paid was than the one the policy was told, on average (a
        told median of recent delays is below the mean a jittery link with spikes charges; zero where
        the outcome has no measured compute, since the realized delay is then the told one)."""
        w, gap = self.delay_gap
        return float(gap / w) if w > 0 else 0.0

    def compute_slope(self) -> float:
        """Compute per drafted token. It starts from a guess (drafting one token is a third of the
        shortest played length's round, a round mostly of verification; a third of the most played
        length's round, when that was 7 tokens long and mostly drafting, made drafting look half as
        costly as it was and an expensive drafter played 7-8 tokens for its first 35 rounds) and the
        rounds at other lengths earn it away from there: one round slowed 2x
        at start-up (1,046 ms of compute for a 478 ms length), taken at face value, made every length
        above 1 look hopeless for a whole live run. Fitted on lengths seen at least twice once two
        exist: while lengths seen once must be used, one odd round has the most leverage."""
        L, seen, mean = self._arm_means()
        if not seen.any():
            return 1.0
        most, shortest = int(np.argmax(self.arm_n)), int(np.argmax(seen))
        guess = mean[shortest] / (3.0 * (shortest + 1))
        fit_on = self.arm_n >= 2 if (self.arm_n >= 2).sum() >= 2 else seen
        if fit_on.sum() < 2:
            return guess
        w = np.sqrt(self.arm_n[fit_on])
        fitted = max(float(np.polyfit(L[fit_on], mean[fit_on], 1, w=w)[0]), 0.0)
        others = float(self.arm_n.sum() - self.arm_n[most])
        return (others * fitted + SLOPE_PRIOR_ROUNDS * guess) / (others + SLOPE_PRIOR_ROUNDS)

    def _arm_means(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lengths 1..K, which were played, their mean compute; 0 where not played)."""
        seen = self.arm_n > 0
        mean = np.where(seen, self.arm_sum / np.maximum(self.arm_n, 1), 0.0)
        return np.arange(1, self.max_length + 1, dtype=float), seen, mean

    def compute_sample(self, rng: np.random.Generator, estimate: np.ndarray | None = None) -> np.ndarray:
        """C(L) drawn around its estimate with the uncertainty of its mean: a length played rarely
        (or once, long ago) is not judged forever by a guess from the affine fit."""
        c = self.compute_estimate() if estimate is None else estimate
        spread = max(np.sqrt(self._compute_var()), COMPUTE_SPREAD_FLOOR * float(np.mean(c)))
        return c + TEMPER * spread / np.sqrt(self.arm_n + 1.0) * rng.standard_normal(len(c))

    def _posterior(self, streak: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """Beta(a, b) per position for h(i) = P(accept i | accepted i-1).

        Prior: position 1 alone (drafts are often "heavy-head": the first token is
        accepted far less often than later ones); each position >= 2 takes the pooled
        acceptance of the OTHER later positions as its prior mean, so an untried length
        borrows its neighbours' and no position's own counts enter twice (with them in its
        prior too, three unlucky rejections at position 2 made it look hopeless for good:
        a seed locked on length 1, +14 % over 384 rounds). The pool is itself shrunk toward
        a neutral value: one early rejection must not condemn every later position.
        """
        a_obs, n_obs = self.accepted, self.at_risk
        others_a = a_obs[1:].sum() - a_obs[1:]
        others_n = n_obs[1:].sum() - n_obs[1:]
        mean = np.empty(self.max_length)
        mean[0] = DEFAULT_ACCEPT
        mean[1:] = np.clip((others_a + POOL_PRIOR * DEFAULT_ACCEPT) / (others_n + POOL_PRIOR), 0.05, 0.95)
        strength = np.full(self.max_length, PRIOR_STRENGTH)
        # never more pseudo-rounds than the pool itself rests on: a pool of a few rounds is mostly its
        # neutral prior, and 30 rounds of that once pulled a low-flat drafter's 0.33 at position 2 to 0.5
        strength[1:] = np.clip(others_n, PRIOR_STRENGTH, self._pool_strength())
        a, b = a_obs + strength * mean, (n_obs - a_obs) + strength * (1 - mean)
        if streak < 0:
            return a, b
        # acceptance runs in streaks: the rounds that followed a round like the last one, with the
        # pooled estimate behind them (so where acceptance does not persist, they agree with it)
        pooled = a / (a + b)
        sa, sn = self.streak_accepted[streak], self.streak_at_risk[streak]
        if not self._persists(streak, pooled):
            return a, b
        return sa + STREAK_PRIOR * pooled, (sn - sa) + STREAK_PRIOR * (1 - pooled)

    def _pool_strength(self) -> float:
        """Pseudo-rounds of the pooled acceptance behind each position >= 2: as many as the positions'
        spread around the pool allows (empirical Bayes, a beta-binomial's strength m(1 - m) / var - 1),
        between PRIOR_STRENGTH and POOL_STRENGTH_MAX. Where later positions accept alike (flat and
        heavy-head shapes), a position few rounds reached is not judged by its own handful: 6 of 10
        accepted at the position past a compute jump, against 82 % at the others, once locked a run on
        the length before the jump (+5 %) with a length past it 5 % faster never played."""
        a, n = self.accepted[1:], self.at_risk[1:]
        seen = n > 0
        if seen.sum() < 2:
            return POOL_STRENGTH_MAX
        m = float(a[seen].sum() / n[seen].sum())
        noise = m * (1 - m) / n[seen]
        spread = float(np.average((a[seen] / n[seen] - m) ** 2 - noise, weights=n[seen]))
        if spread <= 0:
            return POOL_STRENGTH_MAX
        return float(np.clip(m * (1 - m) / spread - 1.0, PRIOR_STRENGTH, POOL_STRENGTH_MAX))

    def _persists(self, streak: int, pooled: np.ndarray) -> bool:
        """Whether the rounds after this streak state accept differently from all rounds by more than
        chance (a chi-square over positions, at about 3 standard deviations): where acceptance does not
        persist, conditioning on the last round would only add noise to every choice."""
        sa, sn = self.streak_accepted[streak], self.streak_at_risk[streak]
        p = np.clip(pooled, 1e-3, 1 - 1e-3)
        used = sn > 0
        k = int(used.sum())
        if k == 0:
            return False
        stat = float((((sa - sn * p) ** 2)[used] / (sn * p * (1 - p))[used]).sum())
        return stat > k + PERSIST_Z * np.sqrt(2.0 * k)

    def _streaky(self) -> bool:
        """Whether acceptance looks streaky: the two-regime fit is half-way to evident (control.streaks)
        or the rounds after some streak state accept differently from all rounds (_persists):
        then position L + 1's own rounds come from whichever stretch happened to reach it, and a hard
        stretch's handful says little about the easy stretches' (streaky/cheap-draft#1 at 5 ms: the stop
        on a hard stretch's evidence raised a seed 3.22 -> 3.47 %)."""
        if self.regimes.hinted:  # the two-regime fit beats the pooled one by half the margin it needs
            return True
        a, b = self._posterior()
        pooled = a / (a + b)
        return any(self._persists(s, pooled) for s in range(STREAKS))

    def hazard_sample(self, rng: np.random.Generator | None, streak: int = -1) -> np.ndarray:
        """h(1..K): a tempered posterior draw (posterior means when rng is None), after a round in
        streak state `streak` (-1: whatever the last round was)."""
        a, b = self._posterior(streak)
        mean_h = a / (a + b)
        return mean_h if rng is None else mean_h + TEMPER * (rng.beta(a, b) - mean_h)

    def _optimistic_next(self, L: int, h: np.ndarray, cost: np.ndarray) -> int:
        """One step of optimism: a round of length L never reveals position L + 1, so an early,
        pessimistic estimate of it would never be corrected (the heavy tail of seeds locked on too
        short a length). While few rounds have reached position L + 1, it is judged at an upper
        posterior quantile; if one token more then pays, draft it. Few is 60: with 30, an estimate
        1.7 posterior deviations low (one seed in 20) still locked a seed on L for a whole run where
        L + 1 was 2-3.6 % faster."""
        if L >= self.max_length or self.at_risk[L] >= OPTIMISM_MIN:
            return L
        a, b = self._posterior()
        sd = np.sqrt(a[L] * b[L] / ((a[L] + b[L]) ** 2 * (a[L] + b[L] + 1)))
        up = h.copy()
        up[L] = max(h[L], min(a[L] / (a[L] + b[L]) + OPTIMISM_Z * sd, 0.99))
        tokens = 1.0 + np.cumsum(np.cumprod(up))
        if not cost[L] / tokens[L] < cost[L - 1] / tokens[L - 1]:
            return L
        if OPTIMISM_STOP_Z is not None and self._clearly_short(L, h, cost):
            return L
        return L + 1

    def _needed(self, L: int, h: np.ndarray, cost: np.ndarray) -> float:
        """The acceptance h(L + 1) (0-based index L) at which L + 1 tokens cost what L do, for the
        other positions at `h` and lengths at `cost`: above it, the longer length is faster."""
        reach = float(np.prod(h[:L]))  # P(positions 1..L accepted): the share of rounds that reach L + 1
        tokens = 1.0 + float(np.sum(np.cumprod(h[:L])))
        if reach <= 0:
            return np.inf
        return (cost[L] * tokens / cost[L - 1] - tokens) / reach

    def _clearly_short(self, L: int, h: np.ndarray, cost: np.ndarray) -> bool:
        """Whether position L + 1's own rounds (no prior: the pooled prior is what optimism doubts)
        already place its acceptance below what L + 1 needs, by OPTIMISM_STOP_Z deviations of a
        one-sided Wilson bound. A count of reaches ends optimism late where acceptance is low: at
        0.34 first-token acceptance, 60 reaches of position 2 took ~175 rounds of length 2."""
        n = float(self.at_risk[L])
        if n < max(OPTIMISM_STOP_MIN, 1) or (OPTIMISM_STOP_STREAKS and self._streaky()):
            return False
        p, z = float(self.accepted[L]) / n, OPTIMISM_STOP_Z
        upper = (p + z * z / (2 * n) + z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
        return upper < self._needed(L, h, cost)

    # --- acting ------------------------------------------------------------
    def _stopping(self) -> bool:
        """The per-token rule acts once two rounds have shown a compute slope and a ms/token."""
        return self.n_obs >= 2 and self.recent[2] > 0

    def stop_bar(self, delay_ms: float) -> float:
        """a / lambda: stop once P(1..n accepted) * p_n falls below it. lambda = (compute + 2 d) / tokens
        of the recent rounds, at this round's delay (compute does not depend on it)."""
        w, compute, tokens = self.recent
        lam = (compute + 2.0 * delay_ms * w) / tokens
        return min(1.0, max(0.0, self.compute_slope() / lam)) if lam > 0 else 0.0

    def should_stop(self, ctx: RoundContext, position: int, confidence: float) -> bool:
        if not self._stopping():
            return False
        if position <= 1:  # a new round (this is the round's own copy)
            self._all_accepted, self._bar = 1.0, self.stop_bar(ctx.delay_ms)
            self._hazard_logit = _logit(self.hazard_sample(None)) if STOP_LOOKAHEAD else None
        p = min(1.0, max(0.0, float(confidence)))
        self._all_accepted *= p
        if self._hazard_logit is None or position >= self.max_length:
            return self._all_accepted * p < self._bar
        return not self._drafting_on_pays(position, p)

    def _drafting_on_pays(self, n: int, p: float) -> bool:
        """Whether some k more tokens earn more than they cost: lambda P(1..n+j accepted) summed over
        j <= k above a k for some k (DESIGN.md section 2's rule, looking past the next token). Token
        n + j is predicted at its position's learned hazard shifted, in logits, by how far token n's
        reading sits from its own position's: a token harder than its position predicts hard tokens
        after it, but a hard first token on a pair whose later positions are easy does not predict a
        hard second one (the one-step rule, predicting the next token's acceptance by this one's,
        stopped those drafts: heavy-head pairs 3.2 % behind the best threshold in hindsight)."""
        h = self._hazard_logit
        future = _sigmoid(h[n:] + (_logit(p) - h[n - 1]))
        reach = self._all_accepted * np.cumprod(future)
        return bool(np.max(np.cumsum(reach - self._bar)) > 0.0)

    def choose(self, ctx: RoundContext) -> int:
        if ctx.stops and self._stopping():
            return self.max_length  # the stop rule cuts it
        middle = self.max_length // 2 + 1
        if self.n_obs == 0 and not self.compute_known():
            return middle if OPENING_MIDDLE else 1
        if self.n_obs == 1 and self.arm_n[middle - 1] == 0:
            return middle  # a second round at another length pins the compute slope (a middle one costs
            # less than the longest and still shows positions past the first few)
        rng = np.random.default_rng([self.seed, self.n_obs, self.n_chosen])
        self.n_chosen += 1
        estimate = self.compute_estimate()  # once per choice: the draw and the leader both use it
        c = np.maximum(self.compute_sample(rng, estimate), 1e-6)
        streak = self.last_streak
        h = self.hazard_sample(rng, streak)
        b = 1.0 + np.cumsum(np.cumprod(h))
        if self.use_state and ctx.channel_state is not None and len(self.states) >= 2 \
                and str(ctx.channel_state) in self.states:
            state = self.states[str(ctx.channel_state)]
            L = self._choose_markov(str(ctx.channel_state), c, b)
            return self._optimistic_next(L, h, c + 2.0 * state["delay_sum"] / state["n"])
        delay = max(0.0, ctx.delay_ms + self.delay_bias())
        cost = c + 2.0 * delay
        table = self._regime_table(delay, estimate)
        if table is not None:
            L = int(table[int(round(self.regimes.belief * (len(table) - 1)))])
            return self._optimistic_next(L, h, cost) if REGIME_OPTIMISM else L
        mean_b = 1.0 + np.cumsum(np.cumprod(self.hazard_sample(None, streak)))
        lead = self._leader(delay, estimate, mean_b)
        cost_mean = np.maximum(estimate, 1e-6) + 2.0 * delay
        lo, hi = max(lead - 1, 0), min(lead + 2, self.max_length)
        for near in (lead + 1, lead - 1):  # the longer neighbour first: it also shows one more position
            if lo <= near < hi and self.arm_n[near] < NEIGHBOUR_MIN and not self._clearly_worse(near, lead, cost_mean, mean_b):
                return near + 1
        far = self._explore(delay, estimate, mean_b, lead)
        if far is not None:
            return far + 1
        return self._reveal(self._optimistic_next(lo + int(np.argmin((cost / b)[lo:hi])) + 1, h, cost), cost_mean)

    def _reveal(self, L: int, cost: np.ndarray) -> int:
        """L, or L + REVEAL_STEP where L is short and few rounds were played past it: a length-1-2
        learner never reaches the positions whose acceptance would show easy stretches (streaky
        acceptance) or a longer length's worth, and optimism looks one position ahead only. The
        budget grows as sqrt(rounds), capped, so its share of the rounds decays and stays small where
        the short length is right; only where the longer round costs little even if every token it
        adds is rejected (forced onto an expensive drafter at 0 ms, short's worst seed 4.41 -> 7.31 %)."""
        if REVEAL_RATE is None or L > REVEAL_LEADER or L >= self.max_length or self.n_obs < REVEAL_AFTER:
            return L
        longer = min(L + REVEAL_STEP, self.max_length)
        if REVEAL_BOUND not in ("cost", "loss", "both"):
            raise ValueError(f"REVEAL_BOUND must be 'cost', 'loss' or 'both', not {REVEAL_BOUND!r}")
        if REVEAL_BOUND != "loss" and cost[longer - 1] > (1.0 + REVEAL_COST) * cost[L - 1]:
            return L
        if REVEAL_BOUND != "cost" and not self._reveal_pays(L, longer, cost):
            return L
        past = float(self.arm_n[L + REVEAL_STEP - 1:].sum())  # rounds that reached past L + 1, if accepted
        if past >= min(REVEAL_RATE * np.sqrt(self.n_obs - REVEAL_AFTER), REVEAL_MAX):
            return L
        return longer

    def _reveal_pays(self, L: int, longer: int, cost: np.ndarray) -> bool:
        """Whether `longer` could cost at most REVEAL_MARGIN more per token than L: positions L + 1 ..
        longer judged at their posterior mean + OPTIMISM_Z deviations (as _optimistic_next does for
        one position), L at the posterior means. A bound on the round's extra compute is loose at high
        delay (200 ms made an expensive drafter's two tokens "cheap"); this one asks what the longer
        round could earn, so where positions past L accept poorly (low-flat) it stays at L."""
        a, b = self._posterior()
        mean = a / (a + b)
        sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        up = mean.copy()
        up[L:longer] = np.minimum(mean[L:longer] + OPTIMISM_Z * sd[L:longer], 0.99)
        j_short = cost[L - 1] / (1.0 + float(np.sum(np.cumprod(mean[:L]))))
        j_long = cost[longer - 1] / (1.0 + float(np.sum(np.cumprod(up[:longer]))))
        return j_long <= (1.0 + REVEAL_MARGIN) * j_short

    def _clearly_worse(self, near: int, lead: int, cost: np.ndarray, mean_b: np.ndarray) -> bool:
        """Whether a neighbour played at least once is judged NEIGHBOUR_CLEAR slower than the leader at
        the posterior means: its remaining opening plays would only confirm it (short horizons: the
        three plays of each neighbour were 0.24 of the short kind's 1.06 % expected gap)."""
        if NEIGHBOUR_CLEAR is None or self.arm_n[near] < 1:
            return False
        return bool(cost[near] / mean_b[near] > (1.0 + NEIGHBOUR_CLEAR) * cost[lead] / mean_b[lead])

    def _regime_table(self, delay_ms: float, estimate: np.ndarray) -> np.ndarray | None:
        """Where acceptance runs in hidden easy/hard streaks (the learned two-regime model explains the
        rounds clearly better than one regime), the best length at each belief P(easy): the belief-MDP
        optimum (control.regimes) for the learned model and the estimated compute, the rule the streaky
        scenarios' oracle plays with the true model. Conditioning on the last round alone summarised that
        belief coarsely (+2.4 % over the oracle on the streaky kind's quick run). None: the pooled rule."""
        model = self.regimes.model
        if not self.regimes.active or model is None:
            self._table = None
            return None
        if self._table is None or self._table[0] is not model or \
                abs(delay_ms - self._table[1]) > RESOLVE_DELAY * max(self._table[1], 1.0):
            reg = HiddenRegimes(np.cumprod(model.hazard, axis=1), model.transitions())
            self._table = (model, delay_ms, solve_belief(np.maximum(estimate, 1e-6), delay_ms, reg, REGIME_GRID)[1])
        return self._table[2]

    def _leader(self, delay_ms: float, estimate: np.ndarray, mean_b: np.ndarray) -> int:
        """The best length (0-based) under the posterior means. A draw may pick only it and its two
        neighbours: where ms/token is unimodal in L, exploring next to the leader is enough to move it
        (a unimodal bandit, as OSUB), while a draw of optimistic hazards for positions nobody has
        reached yet no longer sends whole rounds to lengths 6-8 (live, those were most of auto's gap
        over its first hundred rounds); lengths farther off are tried by _explore only while they
        could still be better. Each neighbour is played a few times before the leader is trusted: one
        round slowed 2x at start-up (1,046 ms of compute for a 478 ms length) once made every length
        above 1 look hopeless for a whole run."""
        return int(np.argmin((np.maximum(estimate, 1e-6) + 2.0 * delay_ms) / mean_b))

    def _explore(self, delay_ms: float, estimate: np.ndarray, mean_b: np.ndarray, lead: int) -> int | None:
        """A length (0-based) off the leader's neighbours that could still beat the leader, or None.
        J(L) need not be unimodal (compute can jump at some length: a batch shape or kernel change),
        and a learner that explores only next to its leader then locks for good on a local minimum
        with better lengths never played. Compute is non-decreasing in L, so a length's compute is at
        least its own mean less EXPLORE_Z standard errors, and at least a shorter played length's
        lower bound plus the smallest slope seen between played lengths; a length whose ms/token at
        that bound (acceptance at its posterior mean: an upper quantile for positions few rounds have
        reached made far lengths look good for hundreds of rounds, +0.7 % on the families) beats the
        leader's estimate is played, the most
        promising first. Each play tightens its own bound, so the exploration stops by itself where
        the bound is clear of the leader (a few rounds where J is unimodal)."""
        L, seen, mean = self._arm_means()
        played = np.flatnonzero(seen)
        if len(played) < 2 or self.n_obs < EXPLORE_AFTER:
            return None
        sd = max(np.sqrt(self._compute_var()), COMPUTE_SPREAD_FLOOR * float(np.mean(estimate)))
        own = np.where(seen, mean - EXPLORE_Z * sd / np.sqrt(np.maximum(self.arm_n, 1.0)), 0.0)
        steps = np.diff(mean[played]) / np.diff(L[played])
        slope = max(float(steps.min()), 0.0)
        low = own.copy()
        best_below = -np.inf
        for i in range(self.max_length):
            if best_below > -np.inf:
                low[i] = max(low[i], best_below + slope)
                best_below += slope
            if seen[i]:
                best_below = max(best_below, own[i])
        bar = (estimate[lead] + 2.0 * delay_ms) / mean_b[lead]
        j_low = (low + 2.0 * delay_ms) / mean_b
        j_low[max(lead - 1, 0):lead + 2] = np.inf
        if EXPLORE_PLAYS is not None:
            j_low[self.arm_n >= EXPLORE_PLAYS] = np.inf
        i = int(np.argmin(j_low))
        return i if j_low[i] < bar else None

    def _choose_markov(self, state: str, c: np.ndarray, b: np.ndarray) -> int:
        """The semi-Markov optimum for the estimated chain. Channel states change in wall-clock
        time, so the chain is estimated as a generator: each state's exit rate is its observed
        switches per ms spent in rounds begun there (a round lasts compute + 2 delay), the jump
        targets their observed shares. A long-dwelling chain then gets the per-state best
        length, a fast one a length shared by all states (control.markov)."""
        keys = sorted(self.states)
        n = np.array([self.states[k]["n"] for k in keys])
        delay = np.array([self.states[k]["delay_sum"] for k in keys]) / n
        spent = np.array([self.states[k]["compute_sum"] + 2.0 * self.states[k]["delay_sum"] for k in keys])
        scale = np.array([_shrunk_ratio(self.states[k]) for k in keys])
        counts = np.array([[self.transitions.get(i, {}).get(j, 0.0) for j in keys] for i in keys])
        np.fill_diagonal(counts, 0.0)
        jumps = counts + 0.1 * (1.0 - np.eye(len(keys)))
        q = jumps / jumps.sum(axis=1, keepdims=True) * (counts.sum(axis=1) / np.maximum(spent, 1e-9))[:, None]
        np.fill_diagonal(q, -q.sum(axis=1))
        t = scale[:, None] * c[None, :] + 2.0 * delay[:, None]
        _, pick = clock_policy_iteration(t, b, q)
        return int(pick[keys.index(state)]) + 1

    # --- persistence -------------------------------------------------------
    def state(self) -> dict:
        return {"seed": self.seed, "n_obs": self.n_obs, "n_chosen": self.n_chosen,
                "accepted": self.accepted.tolist(), "at_risk": self.at_risk.tolist(),
                "arm_n": self.arm_n.tolist(), "arm_sum": self.arm_sum.tolist(), "arm_sq": self.arm_sq.tolist(),
                "states": self.states, "transitions": self.transitions, "prev_state": self.prev_state,
                "recent": self.recent.tolist(), "delay_gap": self.delay_gap.tolist(),
                "streak_accepted": self.streak_accepted.ravel().tolist(),
                "streak_at_risk": self.streak_at_risk.ravel().tolist(), "last_streak": self.last_streak,
                "regimes": self.regimes.state()}

    def load_state(self, s: dict) -> None:
        """Every field range-checked (counts finite and >= 0, accepted <= at risk, states bounded)."""
        k, f = self.max_length, checks.field
        arrays = {name: checks.array(f(s, name), name, k) for name in ("accepted", "at_risk", "arm_n", "arm_sum")}
        # older snapshots have no spread: their arms then count as having none yet
        arrays["arm_sq"] = checks.array(s["arm_sq"], "arm_sq", k) if "arm_sq" in s else arrays["arm_sum"] ** 2 / \
            np.maximum(arrays["arm_n"], 1)
        # older snapshots have no moving sums: the stop rule then waits for rounds of its own
        arrays["recent"] = checks.array(s["recent"], "recent", 3) if "recent" in s else np.zeros(3)
        # older snapshots have no delay gap or streak counts: they start from none
        gap = checks.array(s["delay_gap"], "delay_gap", 2, lo=-1e9) if "delay_gap" in s else np.zeros(2)
        if gap[0] < 0:
            raise checks.ControlError("snapshot: 'delay_gap' has a negative round count")
        arrays["delay_gap"] = gap
        for name in ("streak_accepted", "streak_at_risk"):
            arrays[name] = (checks.array(s[name], name, STREAKS * k) if name in s else np.zeros(STREAKS * k)) \
                .reshape(STREAKS, k)
        if (arrays["streak_accepted"] > arrays["streak_at_risk"]).any():
            raise checks.ControlError("snapshot: 'streak_accepted' exceeds 'streak_at_risk' somewhere")
        last_streak = checks.integer(s["last_streak"], "last_streak", -1, STREAKS - 1) if "last_streak" in s else -1
        if arrays["recent"][2] < arrays["recent"][0] * (1 - 1e-9):
            raise checks.ControlError("snapshot: 'recent' counts fewer tokens than rounds")
        if (arrays["accepted"] > arrays["at_risk"]).any():
            raise checks.ControlError("snapshot: 'accepted' exceeds 'at_risk' at some position")
        seed = checks.integer(f(s, "seed"), "seed", 0, 0x7FFF_FFFF)
        n_obs = checks.integer(f(s, "n_obs"), "n_obs")
        n_chosen = checks.integer(f(s, "n_chosen"), "n_chosen")
        states = {}
        for key, v in checks.table(f(s, "states"), "states").items():
            st = checks.table(v, f"states[{key}]", 4)
            states[key] = {name: checks.number(f(st, name), f"states[{key}].{name}")
                           for name in ("n", "delay_sum", "compute_sum", "predicted_sum")}
            if states[key]["n"] < 1:
                raise checks.ControlError(f"snapshot: 'states[{key}].n' must be >= 1")
        transitions = {}
        for i, row in checks.table(f(s, "transitions"), "transitions").items():
            transitions[i] = {j: checks.number(x, f"transitions[{i}][{j}]")
                              for j, x in checks.table(row, f"transitions[{i}]").items()}
        prev = f(s, "prev_state")
        if prev is not None and (not isinstance(prev, str) or len(prev) > checks.MAX_KEY_LEN):
            raise checks.ControlError("snapshot: 'prev_state' must be a short string or null")
        regimes = RegimeLearner(k)
        if "regimes" in s:  # older snapshots have none: the regimes are learned from the next rounds
            try:
                regimes.load(checks.table(s["regimes"], "regimes", 8))
            except (KeyError, TypeError, ValueError) as exc:
                raise checks.ControlError(f"snapshot: {str(exc)[:200]}") from None
        self.seed, self.n_obs, self.n_chosen = seed, n_obs, n_chosen
        self.regimes, self._table = regimes, None
        for name, v in arrays.items():
            setattr(self, name, v)
        self.states, self.transitions, self.prev_state = states, transitions, prev
        self.last_streak = last_streak


def _shrunk_ratio(st: dict) -> float:
    """Observed / predicted compute in one state, shrunk toward 1 for rarely seen states."""
    prior = SHRINK_ROUNDS * st["predicted_sum"] / st["n"]
    denominator = st["predicted_sum"] + prior
    return (st["compute_sum"] + prior) / denominator if denominator > 0 else 1.0


def _logit(p) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), 1e-3, 1.0 - 1e-3)
    return np.log(q / (1.0 - q))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
