"""Per request, the stream tree or rounds, by the cost rule on what this edge measured (pure arithmetic).

`edge --stream-tree auto` asks this before each request. Both modes are modelled the same way, as a
compute cost per token plus round trips per token times the round trip:

    chain:       ms/token(d) = c_chain + rounds_per_token * 2d
    stream tree: ms/token(d) = c0 + (misses_per_token + 1/new_tokens) * 2d   (control/stream_tree_cost)

each term measured on this edge's own finished requests (the compute term is what is left of a
request's time after its round trips at the delay it ran at; exponential averages, so load drift
is followed). A mode never measured is tried first, the chain before the stream tree; after that
the cheaper modelled one runs (ties: the chain). Where delay is ~0 the stream tree's extra draft
work makes its c0 the larger, so the chain is kept; over a long link the chain's round trips per
token make it the dearer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from control.stream_tree_cost import prefer_stream_tree

CHAIN, STREAM = "chain", "stream"


@dataclass
class ModeCost:
    """Running averages of one mode: compute ms per token, round trips (misses for the stream) per token."""

    compute_ms: float = 0.0
    trips: float = 0.0
    n: int = 0

    def add(self, compute_ms: float, trips: float, weight: float) -> None:
        w = 1.0 if self.n == 0 else weight
        self.compute_ms += w * (compute_ms - self.compute_ms)
        self.trips += w * (trips - self.trips)
        self.n += 1


@dataclass
class StreamChoice:
    weight: float = 0.3  # of the newest request in the averages
    min_tokens: int = 16  # shorter requests teach nothing: their prefill and one cold round are most of them
    modes: dict[str, ModeCost] = field(default_factory=lambda: {CHAIN: ModeCost(), STREAM: ModeCost()})

    def observe(self, mode: str, ms: float, tokens: int, round_trips: int, one_way_ms: float) -> None:
        """A finished request: `ms` its time, `round_trips` its rounds (chain) or misses (stream)."""
        if mode not in self.modes:
            raise ValueError(f"stream choice: unknown mode {mode!r} (chain or stream)")
        if tokens < self.min_tokens or ms < 0 or round_trips < 0 or one_way_ms < 0:
            return  # nothing to learn from (a short, empty or failed request)
        extra = 1 if mode == STREAM else 0  # the stream's first round trip (the 1/new_tokens term)
        compute = max(0.0, (ms - (round_trips + extra) * 2 * one_way_ms) / tokens)
        self.modes[mode].add(compute, round_trips / tokens, self.weight)

    def modelled(self, mode: str, one_way_ms: float, new_tokens: int) -> float | None:
        m = self.modes[mode]
        if m.n == 0:
            return None
        if mode == STREAM:
            return m.compute_ms + (m.trips + 1.0 / max(1, new_tokens)) * 2 * one_way_ms
        return m.compute_ms + m.trips * 2 * one_way_ms

    def choose(self, one_way_ms: float, new_tokens: int) -> str:
        if self.modes[CHAIN].n == 0:
            return CHAIN
        if self.modes[STREAM].n == 0:
            return STREAM
        chain = self.modelled(CHAIN, one_way_ms, new_tokens)
        s = self.modes[STREAM]
        use, _ = prefer_stream_tree(chain, s.compute_ms, s.trips, one_way_ms, max(1, new_tokens))
        return STREAM if use else CHAIN
