"""Per request, the stream tree's width, from what this edge measured (pure arithmetic).

More children per node (the draft's top `w` tokens) cut the misses, each a round trip, but each
child is a node the edge drafts below and the cloud verifies. Which width wins depends on the
devices, the delay and the text: on this CPU w2 was best at 50 ms over the bench's prompts (every
expanded node costs the edge) though w8 won on its hardest prompt; under the jetson-orin-nano /
rtx-3090-ti emulation w8 won (one draft forward is one device step whatever it holds;
docs/stream-tree.md). So `edge --stream-width auto` learns it. Per width, a request's ms/token is

    ms/token(w) = a(w) + s(w) * m(w) + 2d/N

m(w) (misses per token at width w) is known for every width from any stream request: each
committed token is judged at its parent node against children fixed by the draft's distribution
there, which depends on the committed context only, not on the tree or the timing. The edge keeps
the draft's top tokens of every node it expands and counts, per width, the committed tokens that
width would have covered (`covered[w-1]` of `judged`). Greedy: exact. Sampling: the committed tokens
have the target's distribution at every width, so the counts estimate m(w) without bias.

a(w) (compute per token) and s(w) (ms per miss) are fitted per width, only by running it: least
squares of its requests' ms/token on their own m(w), with exponential forgetting and s pulled
towards one round trip 2d. A miss does not cost a fixed round trip: measured on this CPU at 50 ms, a
w2 miss cost ~0.8 of one (right after a restart the tree is small and its forwards fast) and a w8
miss ~1.5 (text where the draft hesitates spreads a wide tree's expansions over siblings, so the
path deepens slower), and at 0 ms a miss still costs time (the restart). Fitting on the request's
own misses keeps an easy or a hard request from passing for a cheap or dear width. The next request
is modelled with the pooled m(w).

An untried width is tried when even its best case beats the cheapest modelled width by
`trial_margin`: a from the widest measured width not above it (more children never make the path
cheaper to draft or verify; 0 where there is none), the smallest fitted s. Otherwise the cheapest
modelled width runs. At the 2nd, 4th, 8th, ... decision (then every `max_retry_gap`) another width
runs: an untried one first, even where its best case did not pay (at 0 ms a miss costs no round trip
but does cost time, which the best case cannot see), else, of those modelled within `retry_margin`
of the cheapest (past the gap, all of them), the one least measured lately. The schedule does not restart when the
cheapest changes: widths are often within a few per cent of each other while the prompts' costs
differ 3x, so the cheapest flips, and a restarting schedule spent half the requests re-trying.

The delay. a(w) grows with it (at 200 ms a wide tree hits the node bound shallow: on this CPU w2's
a was 7 ms at 50 ms and 25 at 200), so a width's fit starts afresh when its request ran at a delay
that moved materially from its last one, and a width last run at such a delay is re-tried at once.
Concurrent requests: a width on trial is not sent on another until its trial reports (or
`trial_expiry` decisions pass: a request that failed never reports). Requests the cloud mostly
filled (`cloud --stream-fill`: fewer than half their tokens judged at a node of the tree) teach
nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from control.stream_choice import delay_moved


# 1 left out: on this CPU it was slower than 2 at 0, 50 and 200 ms (5.39 / 20.75 / 77.37 against 4.34 /
# 10.91 / 39.05 ms/token, docs/stream-widths-w1-cpu.json), and below the start nothing bounds its compute
DEFAULT_WIDTHS = (2, 4, 8)


@dataclass
class WidthFit:
    """One width's requests at about one delay: weighted sums for y = a + s u (u: the request's misses
    per token at this width, y: its ms/token less 2d/N), each older request's weight multiplied by the
    decay at every new one."""

    s0: float = 0.0
    su: float = 0.0
    sy: float = 0.0
    suu: float = 0.0
    suy: float = 0.0
    one_way_ms: float = 0.0  # the delay its newest request measured

    def add(self, u: float, y: float, decay: float, one_way_ms: float) -> None:
        self.s0, self.su, self.sy = decay * self.s0 + 1, decay * self.su + u, decay * self.sy + y
        self.suu, self.suy = decay * self.suu + u * u, decay * self.suy + u * y
        self.one_way_ms = one_way_ms

    def coef(self, prior: float, b_range: tuple[float, float], extra_ms: float) -> tuple[float, float]:
        """(a, s): ridge least squares, s (ms per miss) pulled towards one round trip at this fit's delay
        with weight `prior` (in u units squared) and kept within b_range round trips (+ `extra_ms`: at
        0 ms a miss still costs the edge's restart)."""
        rt = 2 * self.one_way_ms
        mu, my = self.su / self.s0, self.sy / self.s0
        vuu, vuy = self.suu - self.s0 * mu * mu, self.suy - self.s0 * mu * my
        s = (vuy + prior * rt) / (max(vuu, 0.0) + prior)
        s = min(max(s, b_range[0] * rt), b_range[1] * rt + extra_ms)
        return my - s * mu, s


@dataclass(frozen=True)
class WidthDecision:
    """A request's width and why: `start`, `trial`, `cheaper`, `delay_changed` or `scheduled`."""

    width: int
    reason: str


@dataclass
class WidthChoice:
    """One edge's learner: `decide` before each stream request, `observe` after it (module docstring)."""

    widths: tuple[int, ...] = DEFAULT_WIDTHS
    start: int = 2  # the first request's width (the stream tree's default)
    decay: float = 0.8  # each width's fit: an older request's weight at every new one (drift is followed)
    prior: float = 0.0008  # the miss cost's pull towards one round trip (as 2 requests 0.04 misses/token apart)
    b_range: tuple[float, float] = (0.25, 4.0)  # a miss costs this many round trips at least and at most ...
    miss_extra_ms: float = 200.0  # ... plus this (at 0 ms a miss costs time, not a round trip)
    miss_decay: float = 0.95  # the miss counts' forgetting per request (a drifting prompt mix is followed)
    min_tokens: int = 16  # shorter requests teach nothing: their one cold round trip is most of them
    trial_margin: float = 0.03  # least best-case gain, as a share of the cheapest modelled, worth a trial
    retry_margin: float = 0.15  # widths modelled within this share of the cheapest are re-tried on schedule
    delay_change: float = 2.0  # a width measured at a delay this factor away from now ...
    delay_change_ms: float = 2.0  # ... and this far (ms) is re-tried
    costs: dict[int, WidthFit] = field(default_factory=dict)
    judged: float = 0.0  # committed tokens judged at a node the edge expanded (decayed)
    covered: dict[int, float] = field(default_factory=dict)  # of those, within each width's children
    max_retry_gap: int = 64  # the re-try schedule's doubling stops at this many decisions apart
    trial_expiry: int = 8  # a trial not reported within this many decisions (a failed request) may be re-issued
    max_width: int = 8  # the widest the edge counts misses for (nodes/protocol/stream_tree.Limits.max_width)
    calls: int = 0  # decisions so far
    next_retry: int = 2  # the decision that re-tries another width (then twice as far on, up to the gap)
    trying: dict[int, int] = field(default_factory=dict)  # width -> the decision that sent it on a trial

    def __post_init__(self) -> None:
        if not self.widths or any(not 1 <= w <= self.max_width for w in self.widths) or \
                not 1 <= self.start <= self.max_width:
            raise ValueError(f"stream width choice: need widths in 1..{self.max_width}, got {self.widths} "
                             f"(start {self.start})")
        self.widths = tuple(sorted(set(self.widths) | {self.start}))

    def observe(self, width: int, ms: float, tokens: int, one_way_ms: float, judged: int,
                covered: list[int] | tuple[int, ...]) -> None:
        """A finished stream request run at `width`: its time, tokens and measured delay, and the counts
        of every width's misses (`covered[i]`: judged tokens within width i+1's children; at `width`
        itself, judged - covered is the request's misses)."""
        if width not in self.widths:
            raise ValueError(f"stream width choice: width {width} is not one of {self.widths}")
        if len(covered) < self.widths[-1] or judged < 0 or any(not 0 <= c <= judged for c in covered):
            raise ValueError(f"stream width choice: need 0 <= covered <= judged for widths 1..{self.widths[-1]}")
        self.trying.pop(width, None)
        if tokens < self.min_tokens or ms < 0 or one_way_ms < 0 or judged < tokens / 2:
            return  # too short to teach anything, or mostly filled by the cloud (no tree judged those tokens)
        self.judged = self.miss_decay * self.judged + judged
        for w in self.widths:
            self.covered[w] = self.miss_decay * self.covered.get(w, 0.0) + covered[w - 1]
        u = (judged - covered[width - 1]) / max(1, judged)
        y = (ms - 2 * one_way_ms) / tokens  # less the first token's round trip
        fit = self.costs.get(width)
        if fit is None or self._moved(fit.one_way_ms, one_way_ms):  # a(w) depends on the delay: start afresh
            fit = self.costs[width] = WidthFit()
        fit.add(u, y, self.decay, one_way_ms)

    def misses_per_token(self, width: int) -> float | None:
        """m(width) from every stream request so far (None before any judged token, or not a candidate)."""
        if self.judged <= 0 or width not in self.widths:
            return None
        return max(0.0, 1.0 - self.covered.get(width, 0.0) / self.judged)

    def fitted(self, width: int) -> tuple[float, float] | None:
        """(a, s) of a width that ran: compute ms/token and ms per miss (module docstring)."""
        f = self.costs.get(width)
        return None if f is None else f.coef(self.prior, self.b_range, self.miss_extra_ms)

    def modelled(self, width: int, one_way_ms: float, new_tokens: int) -> float | None:
        ab, m = self.fitted(width), self.misses_per_token(width)
        if ab is None or m is None:
            return None
        return ab[0] + ab[1] * m + 2 * one_way_ms / max(1, new_tokens)

    def best_case(self, width: int, one_way_ms: float, new_tokens: int) -> float | None:
        """An untried width's least modelled ms/token (module docstring)."""
        m = self.misses_per_token(width)
        if m is None:
            return None
        below = [w for w in self.costs if w <= width]
        a = self.fitted(max(below))[0] if below else 0.0
        s = min((self.fitted(w)[1] for w in self.costs), default=0.0)
        return max(0.0, a) + s * m + 2 * one_way_ms / max(1, new_tokens)

    def decide(self, one_way_ms: float, new_tokens: int) -> WidthDecision:
        """The next stream request's width (call once per request: the re-try schedule counts calls)."""
        if one_way_ms < 0 or new_tokens < 1:
            raise ValueError(f"stream width choice: need delay >= 0 and new_tokens >= 1, got {one_way_ms}, "
                             f"{new_tokens}")
        self.calls += 1
        if not self.costs or self.judged <= 0:
            return WidthDecision(self.start, "start")
        model = {w: self.modelled(w, one_way_ms, new_tokens) for w in self.costs}
        best = min(model, key=lambda w: (model[w], w))  # ties: the narrower (fewer nodes to send and verify)
        best_ms = model[best]
        self.trying = {w: k for w, k in self.trying.items() if self.calls - k < self.trial_expiry}
        untried = {w: self.best_case(w, one_way_ms, new_tokens) for w in self.widths
                   if w not in self.costs and w not in self.trying}  # concurrent requests: one trial at a time
        if untried:
            w = min(untried, key=lambda u: (untried[u], u))
            if untried[w] < (1 - self.trial_margin) * best_ms:
                self.trying[w] = self.calls
                return WidthDecision(w, "trial")
        moved = [w for w in self.costs if w != best and w not in self.trying
                 and self._moved(self.costs[w].one_way_ms, one_way_ms)]
        if moved and not self._moved(self.costs[best].one_way_ms, one_way_ms):  # best is current: re-try them
            w = min(moved, key=lambda u: model[u])
            self.trying[w] = self.calls
            return WidthDecision(w, "delay_changed")
        if self.calls >= self.next_retry:
            gap = min(self.calls, self.max_retry_gap)
            self.next_retry = self.calls + gap
            capped = gap == self.max_retry_gap  # from then on every other width comes round again
            if untried:  # even where its best case did not pay (at 0 ms misses cost no round trip, but time)
                w = min(untried, key=lambda u: (untried[u], u))
                self.trying[w] = self.calls
                return WidthDecision(w, "scheduled")
            near = [w for w in self.costs if w != best and (capped or model[w] <= (1 + self.retry_margin) * best_ms)]
            if near:  # the one least measured lately (its fit the least sure), then the cheaper
                w = min(near, key=lambda u: (self.costs[u].s0, model[u]))
                return WidthDecision(w, "scheduled")
        return WidthDecision(best, "cheaper")

    def _moved(self, measured_ms: float, now_ms: float) -> bool:
        return delay_moved(measured_ms, now_ms, self.delay_change, self.delay_change_ms)
