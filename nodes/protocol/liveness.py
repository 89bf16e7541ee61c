"""Who was heard when, and who is gone: the pure half of heartbeats (no transport, no clock of its own).

Every worker publishes an `AliveMsg` every `HEARTBEAT_S`; a peer heard at least once and then not
for `WINDOW_S` is gone (a killed process, a SIGSTOPped one, a cut link). Silence is counted from
the later of the peer's last heartbeat and the observer's own last (re)connect (`since`): while
the observer itself is cut off it hears nobody, and that must not make every peer look gone. A
peer never heard from is never judged (an old worker that publishes no heartbeats keeps the
timeouts that bound it). Each gone peer is reported once, until it is heard again. Bounded: at
most `cap` peers, the stalest dropped first.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

W = TypeVar("W", bound=Hashable)

HEARTBEAT_S = 1.0    # how often a worker publishes its AliveMsg (and an edge keeps a silent client's stream alive)
WINDOW_S = 3.0       # a peer not heard from this long is gone
MAX_PEERS = 4096     # peers remembered per table
FORGET_S = 60.0      # a peer silent this long is forgotten (as if never heard)


@dataclass
class Peer:
    heard: float          # when its last heartbeat arrived (the observer's monotonic clock)
    load: int = 0
    draining: bool = False
    gone: bool = False    # reported gone, not heard since


class PeerTable:
    def __init__(self, window_s: float = WINDOW_S, cap: int = MAX_PEERS):
        if not window_s > 0 or cap < 1:
            raise ValueError("liveness: the window must be > 0 s and the cap >= 1")
        self.window_s, self.cap = window_s, cap
        self.peers: OrderedDict[str, Peer] = OrderedDict()  # least recently heard first

    def heard(self, node_id: str, now: float, load: int = 0, draining: bool = False) -> bool:
        """A heartbeat from `node_id`; True when it had been reported gone (it is back)."""
        p = self.peers.pop(node_id, None)
        back = p is not None and p.gone
        self.peers[node_id] = Peer(now, load, draining)
        while len(self.peers) > self.cap:
            self.peers.popitem(last=False)
        return back

    def silent_s(self, node_id: str, now: float, since: float = float("-inf")) -> float | None:
        """How long `node_id` has been silent, counted from `since` at the earliest; None: never heard."""
        p = self.peers.get(node_id)
        return None if p is None else now - max(p.heard, since)

    def is_gone(self, node_id: str, now: float, since: float = float("-inf")) -> bool:
        """Heard once, and not within the window (never-heard peers are not judged)."""
        s = self.silent_s(node_id, now, since)
        return s is not None and s > self.window_s

    def alive(self, now: float, since: float = float("-inf")) -> list[str]:
        """Peers heard within the window, most recently heard last."""
        return [n for n in self.peers if not self.is_gone(n, now, since)]

    def usable(self, now: float, since: float = float("-inf")) -> list[str]:
        """Alive and not draining: where new work may go."""
        return [n for n in self.alive(now, since) if not self.peers[n].draining]

    def avoid(self, node_id: str, now: float, since: float = float("-inf")) -> bool:
        """Known by its heartbeats to be gone or draining (never-heard peers: False)."""
        p = self.peers.get(node_id)
        return p is not None and (p.draining or self.is_gone(node_id, now, since))

    def prune(self, now: float, older_than_s: float) -> list[str]:
        """Forget peers not heard for `older_than_s` (long gone: a replaced worker is another id)."""
        old = [n for n, p in self.peers.items() if now - p.heard > older_than_s]
        for n in old:
            del self.peers[n]
        return old

    def newly_gone(self, now: float, since: float = float("-inf")) -> list[tuple[str, float]]:
        """Peers gone since the last call: (node_id, silent seconds), each once until heard again."""
        out = []
        for n, p in self.peers.items():
            if not p.gone and self.is_gone(n, now, since):
                p.gone = True
                out.append((n, now - p.heard))
        return out


def keepalive_due(last_sent: float, now: float, period_s: float) -> bool:
    """Whether a client the edge has sent nothing since `last_sent` gets a keepalive now: after about a
    heartbeat period (a tenth of slack, so a tick that fires a little early does not skip a period
    and leave the client silent for two)."""
    return now - last_sent >= period_s * 0.9


class HolderWatch(Generic[W]):
    """Rounds waiting for a verdict, by the verifier that holds them; None: a round sent to the queue
    group, which any verifier may have taken, so every verifier that goes silent concerns it."""

    def __init__(self) -> None:
        self._waiting: dict[str | None, set[W]] = {}

    def add(self, holder: str | None, waiter: W) -> None:
        self._waiting.setdefault(holder, set()).add(waiter)

    def discard(self, holder: str | None, waiter: W) -> None:
        waiting = self._waiting.get(holder)
        if waiting is not None:
            waiting.discard(waiter)
            if not waiting:
                del self._waiting[holder]

    def gone(self, verifier_id: str) -> set[W]:
        """The rounds that `verifier_id` going silent concerns: its own and the queue group's."""
        return self._waiting.get(verifier_id, set()) | self._waiting.get(None, set())
