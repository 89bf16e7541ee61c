"""Per request, the stream tree's width, from what this edge measured (pure arithmetic).

More children per node (the draft's top `w` tokens) cut the misses, each a round trip, but each
child is a node the edge drafts below and the cloud verifies. Which width wins depends on the
devices, the delay and the text: on this CPU w2 was best at 50 ms over the bench's prompts (every
expanded node costs the edge) though w8 won on its hardest prompt; under the jetson-orin-nano /
rtx-3090-ti emulation w8 won (one draft forward is one device step whatever it holds;
docs/stream-tree.md). So `edge --stream-width auto` learns it. Per width, a request's ms/token is

    ms/token(w) = a(w) + b(w) * m(w) * 2d + 2d/N

m(w) (misses per token at width w) is known for every width from any stream request: each
committed token is judged at its parent node against children fixed by the draft's distribution
there, which depends on the committed context only, not on the tree or the timing. The edge keeps
the draft's top tokens of every node it expands and counts, per width, the committed tokens that
width would have covered (`covered[w-1]` of `judged`). Greedy: exact. Sampling: the committed tokens
have the target's distribution at every width, so the counts estimate m(w) without bias.

a(w) (compute per token) and b(w) (the share of a round trip a miss costs) are fitted per width,
only by running it: least squares of its requests' ms/token on their own m(w) * 2d, with
exponential forgetting and b pulled towards 1. A miss does not cost a fixed round trip: measured on
this CPU, a w2 miss cost ~0.8 of one (right after a restart the tree is small and its forwards fast)
and a w8 miss ~1.5 (text where the draft hesitates spreads a wide tree's expansions over siblings,
so the path deepens slower); fitting on the request's own misses keeps an easy or a hard request
from passing for a cheap or dear width. The next request is modelled with the pooled m(w).

An untried width is tried when even its best case beats the cheapest modelled width by
`trial_margin`: a from the widest measured width not above it (more children never make the path
cheaper to draft or verify; 0 where there is none), the smallest fitted b. Otherwise the cheapest
modelled width runs, and the others within `retry_margin` of it are re-tried, in turn, at the 2nd,
4th, 8th, ... request (a schedule that does not restart when the cheapest changes: the widths are
often within a few per cent of each other and the prompts' costs differ by 3x, so the cheapest
flips, and a restarting schedule spent half the requests re-trying); a width last run at a delay
that has since moved materially is re-tried at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field


# 1 left out: it lost to 2 at every delay measured, 0 ms included (more misses, and no cheaper forward on
# this CPU), and untried below the start its trial could only be bounded by zero compute
DEFAULT_WIDTHS = (2, 4, 8)


@dataclass
class WidthFit:
    """One width's requests: weighted sums for y = a + b x (x: the request's m(w) * 2d, y: its ms/token
    less 2d/N), each older request's weight multiplied by the decay at every new one."""

    s0: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    n: int = 0
    one_way_ms: float = 0.0  # the delay its newest request measured

    def add(self, x: float, y: float, decay: float, one_way_ms: float) -> None:
        self.s0, self.sx, self.sy = decay * self.s0 + 1, decay * self.sx + x, decay * self.sy + y
        self.sxx, self.sxy = decay * self.sxx + x * x, decay * self.sxy + x * y
        self.n += 1
        self.one_way_ms = one_way_ms

    def coef(self, prior: float, b_range: tuple[float, float]) -> tuple[float, float]:
        """(a, b): ridge least squares, b pulled towards 1 with weight `prior` (in x units squared), b
        kept in `b_range` (a miss never pays, and never costs many round trips)."""
        mx, my = self.sx / self.s0, self.sy / self.s0
        vxx, vxy = self.sxx - self.s0 * mx * mx, self.sxy - self.s0 * mx * my
        b = min(max((vxy + prior) / (max(vxx, 0.0) + prior), b_range[0]), b_range[1])
        return my - b * mx, b


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
    prior: float = 8.0  # b's pull towards 1 (ms^2: as 2 requests 2 ms apart in m * 2d)
    b_range: tuple[float, float] = (0.25, 4.0)
    miss_decay: float = 0.95  # the miss counts' forgetting per request (a drifting prompt mix is followed)
    min_tokens: int = 16  # shorter requests teach nothing: their one cold round trip is most of them
    trial_margin: float = 0.03  # least best-case gain, as a share of the cheapest modelled, worth a trial
    retry_margin: float = 0.15  # widths modelled within this share of the cheapest are re-tried on schedule
    delay_change: float = 2.0  # a width measured at a delay this factor away from now ...
    delay_change_ms: float = 2.0  # ... and this far (ms) is re-tried
    costs: dict[int, WidthFit] = field(default_factory=dict)
    judged: float = 0.0  # committed tokens judged at a node the edge expanded (decayed)
    covered: dict[int, float] = field(default_factory=dict)  # of those, within each width's children
    calls: int = 0  # decisions so far
    next_retry: int = 2  # the decision that re-tries a near width (then twice as far on)
    _rotate: int = 0  # which of the near widths the next scheduled re-try takes

    def __post_init__(self) -> None:
        if not self.widths or any(w < 1 for w in self.widths) or self.start < 1:
            raise ValueError(f"stream width choice: need widths >= 1, got {self.widths} (start {self.start})")
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
        if tokens < self.min_tokens or ms < 0 or one_way_ms < 0:
            return
        self.judged = self.miss_decay * self.judged + judged
        for w in self.widths:
            self.covered[w] = self.miss_decay * self.covered.get(w, 0.0) + covered[w - 1]
        x = (judged - covered[width - 1]) / max(1, judged) * 2 * one_way_ms
        y = (ms - 2 * one_way_ms) / tokens  # less the first token's round trip
        self.costs.setdefault(width, WidthFit()).add(x, y, self.decay, one_way_ms)

    def misses_per_token(self, width: int) -> float | None:
        """m(width) from every stream request so far (None before any judged token, or not a candidate)."""
        if self.judged <= 0 or width not in self.widths:
            return None
        return max(0.0, 1.0 - self.covered.get(width, 0.0) / self.judged)

    def fitted(self, width: int) -> tuple[float, float] | None:
        """(a, b) of a width that ran (module docstring)."""
        f = self.costs.get(width)
        return None if f is None else f.coef(self.prior, self.b_range)

    def modelled(self, width: int, one_way_ms: float, new_tokens: int) -> float | None:
        ab, m = self.fitted(width), self.misses_per_token(width)
        if ab is None or m is None:
            return None
        return ab[0] + ab[1] * m * 2 * one_way_ms + 2 * one_way_ms / max(1, new_tokens)

    def best_case(self, width: int, one_way_ms: float, new_tokens: int) -> float | None:
        """An untried width's least modelled ms/token (module docstring)."""
        m = self.misses_per_token(width)
        if m is None:
            return None
        below = [w for w in self.costs if w <= width]
        a = self.fitted(max(below))[0] if below else 0.0
        b = min((self.fitted(w)[1] for w in self.costs), default=self.b_range[0])
        return max(0.0, a) + b * m * 2 * one_way_ms + 2 * one_way_ms / max(1, new_tokens)

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
        untried = {w: self.best_case(w, one_way_ms, new_tokens) for w in self.widths if w not in self.costs}
        if untried:
            w = min(untried, key=lambda u: (untried[u], u))
            if untried[w] < (1 - self.trial_margin) * best_ms:
                return WidthDecision(w, "trial")
        moved = [w for w in self.costs if w != best and self._moved(self.costs[w].one_way_ms, one_way_ms)]
        if moved and not self._moved(self.costs[best].one_way_ms, one_way_ms):  # best is current: re-try them
            return WidthDecision(min(moved, key=lambda w: model[w]), "delay_changed")
        near = sorted((w for w in self.costs if w != best and model[w] <= (1 + self.retry_margin) * best_ms),
                      key=lambda w: model[w])
        if self.calls >= self.next_retry:
            self.next_retry = 2 * self.calls
            if near:
                w = near[self._rotate % len(near)]
                self._rotate += 1
                return WidthDecision(w, "scheduled")
        return WidthDecision(best, "cheaper")

    def _moved(self, measured_ms: float, now_ms: float) -> bool:
        lo, hi = sorted((measured_ms, now_ms))
        return hi - lo > self.delay_change_ms and hi > self.delay_change * lo
