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

Heartbeats (`peers`, fed by the edge from every verifier's AliveMsg) say who to avoid: a verifier
whose heartbeat stopped (stalled or gone) or that is draining gets no new session until it is
heard again. While one is to be avoided the queue group (which may pick it) is not used: a new
session goes straight to the least loaded usable verifier, even the only one. `elsewhere` names a
verifier other than the one a round timed out on, for its retry.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from nodes.protocol.liveness import PeerTable

EXPLORE = 0.1        # share of new sessions left to the queue group
FORGET_S = 30.0      # a verifier not heard from this long is no longer a candidate
DECAY_S = 2.0        # an estimate halves over about this long without news (the queue may have drained)
SMOOTH = 0.3         # weight of the newest queue time in the average


@dataclass
class _Seen:
    queue_ms: float
    at: float


class Placement:
    def __init__(self, seed: int = 0, explore: float = EXPLORE, peers: PeerTable | None = None):
        self.explore = explore
        self.rng = random.Random(f"placement:{seed}")
        self.seen: dict[str, _Seen] = {}
        self.peers = peers if peers is not None else PeerTable()
        self.since = float("-inf")  # the edge's last (re)connect: silence before it is not counted

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
        if any(self.peers.avoid(v, now, self.since) for v in self.peers.peers):
            return self.elsewhere(None, now)
        if len(live) < 2 or self.rng.random() < self.explore:
            return None
        return min(live, key=lambda v: (self._estimate(live[v], now), v))

    def elsewhere(self, avoid: str | None, now: float) -> str | None:
        """The least loaded verifier whose heartbeat is fresh and that is not draining, other than
        `avoid`; None when there is none (the caller falls back to the queue group)."""
        usable = [v for v in self.peers.usable(now, self.since) if v != avoid]
        if not usable:
            return None
        return min(usable, key=lambda v: (self._estimate(self.seen[v], now) if v in self.seen else 0.0, v))

    def avoided(self, verifier_id: str, now: float) -> bool:
        """Whether heartbeats say `verifier_id` is gone or draining."""
        return self.peers.avoid(verifier_id, now, self.since)

    @staticmethod
    def _estimate(s: _Seen, now: float) -> float:
        return s.queue_ms * 0.5 ** (max(0.0, now - s.at) / DECAY_S)
