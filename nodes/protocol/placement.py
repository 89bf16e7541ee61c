"""Where an edge places a new session: on the verifier with the shortest queue it knows of.

A NATS queue group picks a verifier at random for each new session, and a session then stays
where it started (its K/V cache is there). With a handful of verifiers that leaves one busier
than another for the whole of its sessions: measured on `specstop topology --bench` (48
requests, one emulated GPU per verifier) the busier of two verified 55 % of the rounds, so two
verifiers gave 1.8x one. The edge sees every verdict's queue time (how long the round waited
for its verifier's device), so it keeps a decaying average per verifier and sends a new
session's first round, context included, straight to the least loaded one. It still goes to
the queue group while it knows fewer than two verifiers, and for a fraction of new sessions,
so that verifiers it has not heard from (a new one, or one it left) are found. No transport
here: the edge feeds it verdicts and asks it for a verifier.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

EXPLORE = 0.1        # share of new sessions left to the queue group
FORGET_S = 30.0      # a verifier not heard from this long is no longer a candidate
DECAY_S = 2.0        # an estimate halves over about this long without news (the queue may have drained)
SMOOTH = 0.3         # weight of the newest queue time in the average


@dataclass
class _Seen:
    queue_ms: float
    at: float


class Placement:
    def __init__(self, seed: int = 0, explore: float = EXPLORE):
        self.explore = explore
        self.rng = random.Random(f"placement:{seed}")
        self.seen: dict[str, _Seen] = {}

    def observe(self, verifier_id: str, queue_ms: float, now: float) -> None:
        """A verdict from `verifier_id` whose round waited `queue_ms` there."""
        q = max(0.0, float(queue_ms)) if math.isfinite(queue_ms) else 0.0
        old = self.seen.get(verifier_id)
        est = q if old is None else SMOOTH * q + (1 - SMOOTH) * self._estimate(old, now)
        self.seen[verifier_id] = _Seen(est, now)
        if len(self.seen) > 1024:  # bounded: drop the stalest
            del self.seen[min(self.seen, key=lambda v: self.seen[v].at)]

    def forget(self, verifier_id: str) -> None:
        """That verifier is gone (no responders on its subject)."""
        self.seen.pop(verifier_id, None)

    def choose(self, now: float) -> str | None:
        """The verifier for a new session, or None: let the queue group choose."""
        live = {v: s for v, s in self.seen.items() if now - s.at <= FORGET_S}
        if len(live) < 2 or self.rng.random() < self.explore:
            return None
        return min(live, key=lambda v: (self._estimate(live[v], now), v))

    @staticmethod
    def _estimate(s: _Seen, now: float) -> float:
        return s.queue_ms * 0.5 ** (max(0.0, now - s.at) / DECAY_S)
