"""Per request, the stream tree or rounds, by the cost rule on what this edge measured (pure arithmetic).

`edge --stream-tree auto` asks this before each request. Both modes are modelled the same way, as a
compute cost per token plus round trips per token times the round trip:

    chain:       ms/token(d) = c_chain + t_chain * 2d
    stream tree: ms/token(d) = c_stream + (misses_per_token + 1/N) * 2d   (control/stream_tree_cost)

each term measured on this edge's own finished requests (the compute term is what is left of a
request's time after its round trips at the delay it ran at; plain means of the first few, then
exponential averages, so load drift is followed). The chain is tried first, then the cheaper
modelled mode runs (ties: the chain).

The bound that gates the stream tree. It runs the same two models as the chain and must draft
every token on the accepted path (plus siblings) and have the target verify every committed token,
so its compute per token is taken to be at least `compute_floor` (1.0) times the chain's; its misses
are >= 0 and its first token waits a whole round trip. So, from the chain's measurement alone,

    stream(d) >= floor * c_chain + 2d/N,    gain(d) = chain(d) - stream(d) <= (t_chain - 1/N) * 2d  (floor 1)

i.e. the stream tree can at most remove the chain's round-trip term. Where that best case is below
`trial_margin` (30 %) of the chain's modelled ms/token, the stream tree is neither tried nor run:
at 0 ms the only round trip left is the broker's (~0.35 ms one way live, a best case of 7 % of a
2-3 ms/token chain, 22 % at worst on a loaded machine), and live the stream tree measured 1.5-2.3x
the chain's compute there, so the floor is far from tight and the margin is for the delay's
noise. At 50 ms the term is ~85 % of the chain.

Re-exploration. The mode not in use is run once more when the delay moved materially since it
was last measured (by `delay_change_ms` and by a factor `delay_change`), or, while its modelled
cost is within `retry_margin` of the used one's, on a doubling schedule: after 1, 2, 4, 8, ...
such requests (the count restarts when the cheaper mode changes). The first re-try comes at once
because a mode's first measurement is one prompt's: live, the stream tree's trial fell on the
prompt that costs both modes the most, and it looked dearer than the chain measured on another.
Never the stream tree where the bound says it cannot pay. Concurrent requests decided before a
trial finishes may all take the trial (no in-flight bookkeeping).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from control.stream_tree_cost import prefer_stream_tree

CHAIN, STREAM = "chain", "stream"


@dataclass
class ModeCost:
    """Running averages of one mode: compute ms per token, round trips (misses for the stream) per
    token, and the one-way delay its newest measurement ran at."""

    compute_ms: float = 0.0
    trips: float = 0.0
    n: int = 0
    one_way_ms: float = 0.0

    def add(self, compute_ms: float, trips: float, weight: float, one_way_ms: float) -> None:
        w = max(weight, 1.0 / (self.n + 1))  # a plain mean while few: the first prompt must not dominate
        self.compute_ms += w * (compute_ms - self.compute_ms)
        self.trips += w * (trips - self.trips)
        self.one_way_ms = one_way_ms
        self.n += 1


@dataclass(frozen=True)
class Decision:
    """A request's mode and why: `untried` (the chain first), `bound` (the stream tree cannot pay),
    `trial`, `cheaper`, `delay_changed` or `scheduled` (a re-exploration)."""

    mode: str
    reason: str


@dataclass
class StreamChoice:
    weight: float = 0.3  # of the newest request in the averages
    min_tokens: int = 16  # shorter requests teach nothing: their prefill and one cold round are most of them
    compute_floor: float = 1.0  # stream compute per token >= this x the chain's (module docstring)
    trial_margin: float = 0.3  # least best-case gain, as a share of the chain's ms/token, worth a stream request
    retry_margin: float = 0.25  # the unused mode within this share of the used one's cost is re-tried on schedule
    delay_change: float = 2.0  # a delay this factor away from the unused mode's measurement ...
    delay_change_ms: float = 2.0  # ... and this far (ms) re-tries it
    modes: dict[str, ModeCost] = field(default_factory=lambda: {CHAIN: ModeCost(), STREAM: ModeCost()})
    best: str | None = None  # the cheaper modelled mode at the last decision
    skipped: int = 0  # requests since the last scheduled re-try with the other mode within the margin
    backoff: int = 0  # the next scheduled re-try comes after 2**backoff such requests

    def observe(self, mode: str, ms: float, tokens: int, round_trips: int, one_way_ms: float) -> None:
        """A finished request: `ms` its time, `round_trips` its rounds (chain) or misses (stream),
        `one_way_ms` the delay it measured."""
        if mode not in self.modes:
            raise ValueError(f"stream choice: unknown mode {mode!r} (chain or stream)")
        if tokens < self.min_tokens or ms < 0 or round_trips < 0 or one_way_ms < 0:
            return  # nothing to learn from (a short, empty or failed request)
        extra = 1 if mode == STREAM else 0  # the stream's first round trip (the 1/new_tokens term)
        compute = max(0.0, (ms - (round_trips + extra) * 2 * one_way_ms) / tokens)
        self.modes[mode].add(compute, round_trips / tokens, self.weight, one_way_ms)

    def modelled(self, mode: str, one_way_ms: float, new_tokens: int) -> float | None:
        m = self.modes[mode]
        if m.n == 0:
            return None
        if mode == STREAM:
            return m.compute_ms + (m.trips + 1.0 / max(1, new_tokens)) * 2 * one_way_ms
        return m.compute_ms + m.trips * 2 * one_way_ms

    def stream_floor(self, one_way_ms: float, new_tokens: int) -> float | None:
        """The least ms/token the stream tree can cost at this delay, from the chain's measurement."""
        c = self.modes[CHAIN]
        if c.n == 0:
            return None
        return self.compute_floor * c.compute_ms + 2 * one_way_ms / max(1, new_tokens)

    def stream_can_pay(self, one_way_ms: float, new_tokens: int) -> bool:
        """Whether the stream tree's best case beats the chain by more than `trial_margin` of it."""
        chain, floor = self.modelled(CHAIN, one_way_ms, new_tokens), self.stream_floor(one_way_ms, new_tokens)
        if chain is None or floor is None:
            return False
        return chain - floor > self.trial_margin * chain

    def choose(self, one_way_ms: float, new_tokens: int) -> str:
        return self.decide(one_way_ms, new_tokens).mode

    def decide(self, one_way_ms: float, new_tokens: int) -> Decision:
        """The next request's mode (call once per request: the re-try schedule counts the calls)."""
        if one_way_ms < 0 or new_tokens < 1:
            raise ValueError(f"stream choice: need delay >= 0 and new_tokens >= 1, got {one_way_ms}, {new_tokens}")
        if self.modes[CHAIN].n == 0:
            return Decision(CHAIN, "untried")
        if not self.stream_can_pay(one_way_ms, new_tokens):
            return Decision(CHAIN, "bound")
        if self.modes[STREAM].n == 0:
            return Decision(STREAM, "trial")
        chain = self.modelled(CHAIN, one_way_ms, new_tokens)
        s = self.modes[STREAM]
        use, stream = prefer_stream_tree(chain, s.compute_ms, s.trips, one_way_ms, new_tokens)
        best, other = (STREAM, CHAIN) if use else (CHAIN, STREAM)
        if best != self.best:
            self.best, self.skipped, self.backoff = best, 0, 0
        if self._moved(self.modes[other].one_way_ms, one_way_ms):
            return Decision(other, "delay_changed")
        best_ms, other_ms = (stream, chain) if use else (chain, stream)
        if other_ms <= (1 + self.retry_margin) * best_ms:
            self.skipped += 1
            if self.skipped >= 2 ** self.backoff:
                self.skipped, self.backoff = 0, self.backoff + 1
                return Decision(other, "scheduled")
        return Decision(best, "cheaper")

    def _moved(self, measured_ms: float, now_ms: float) -> bool:
        return delay_moved(measured_ms, now_ms, self.delay_change, self.delay_change_ms)


def delay_moved(measured_ms: float, now_ms: float, factor: float, min_ms: float) -> bool:
    """Whether a cost measured at one-way delay `measured_ms` is stale now: the delay moved by more
    than `factor` and by more than `min_ms` (both, so neither a tiny delay's jitter nor a small
    relative drift at a long one counts)."""
    lo, hi = sorted((measured_ms, now_ms))
    return hi - lo > min_ms and hi > factor * lo
