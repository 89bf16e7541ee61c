"""Readiness from the edges' heartbeats: the pure half of `GET /health` (no transport, no clock of its own).

An edge publishes an `AliveMsg` every second on `specstop.alive.edge.<edge_id>`, with the number
of verifiers it heard from recently. The gateway is ready when an edge it fronts was heard within
`window_s`, is not draining and hears a verifier; otherwise `/health` names what is missing.
A gateway with `--edge X` listens to X only; one in front of the `edges` queue group listens to
every edge (`specstop.alive.edge.*`) and is ready when any of them is (the queue group sends a
request to one of the subscribed edges; an edge without a verifier answers `no_verifier` itself).
Bounded: at most `cap` edges are remembered, the one heard longest ago is forgotten first.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from nodes.protocol.liveness import WINDOW_S  # an edge not heard from this long is gone (as its peers judge)
from schemas.messages import AliveMsg

MAX_EDGES = 4096      # edges remembered
MAX_LISTED = 32       # edges listed in a /health body


@dataclass
class Seen:
    heard: float      # when its last heartbeat arrived (the gateway's monotonic clock)
    seq: int
    load: int
    draining: bool
    verifiers: int


class Readiness:
    def __init__(self, edge_id: str | None, started: float, window_s: float = WINDOW_S, cap: int = MAX_EDGES):
        if not window_s > 0 or cap < 1:
            raise ValueError("readiness: the window must be > 0 s and the cap >= 1")
        self.edge_id, self.started, self.window_s, self.cap = edge_id, started, window_s, cap
        self.edges: OrderedDict[str, Seen] = OrderedDict()  # least recently heard first

    def heard(self, msg: AliveMsg, sender: str | None, now: float) -> str | None:
        """Take a heartbeat that arrived on the subject of edge `sender`; the reason when it is refused."""
        if msg.role != "edge":
            return f"role '{msg.role}' on an edge heartbeat subject"
        if sender is None or msg.node_id != sender:
            return f"node_id '{msg.node_id}' differs from the subject's edge '{sender}'"
        if self.edge_id is not None and sender != self.edge_id:
            return f"edge '{sender}' is not this gateway's edge '{self.edge_id}'"
        self.edges.pop(sender, None)
        self.edges[sender] = Seen(now, msg.seq, msg.load, msg.draining, msg.verifiers)
        while len(self.edges) > self.cap:
            self.edges.popitem(last=False)
        return None

    def _facts(self, edge_id: str, s: Seen, now: float) -> dict[str, Any]:
        return {"edge_id": edge_id, "heard_s_ago": round(now - s.heard, 3), "verifiers": s.verifiers,
                "load": s.load, "draining": s.draining}

    def _why_not(self, edge_id: str, s: Seen | None, now: float) -> str | None:
        if s is None:
            return f"no heartbeat from edge {edge_id} since the gateway started {now - self.started:.1f} s ago"
        if now - s.heard > self.window_s:
            return f"no heartbeat from edge {edge_id} for {now - s.heard:.1f} s"
        if s.draining:
            return f"edge {edge_id} is draining"
        if s.verifiers <= 0:
            return f"edge {edge_id} hears no verifier"
        return None

    def verdict(self, now: float, connected: bool) -> tuple[bool, dict[str, Any]]:
        """(ready, the /health body): `missing` says why not, `edges` what was heard."""
        if self.edge_id is not None:
            s = self.edges.get(self.edge_id)
            why = self._why_not(self.edge_id, s, now)
            missing = [why] if why else []
            listed = [self._facts(self.edge_id, s, now)] if s is not None else []
        else:
            recent = [(e, s) for e, s in reversed(self.edges.items()) if now - s.heard <= self.window_s]
            ready = [e for e, s in recent if self._why_not(e, s, now) is None]
            missing = []
            if not recent:
                last = next(reversed(self.edges.items()), None)
                missing.append(f"no heartbeat from any edge since the gateway started {now - self.started:.1f} s ago"
                               if last is None else
                               f"no heartbeat from any edge for {now - last[1].heard:.1f} s (last: {last[0]})")
            elif not ready:
                missing += [self._why_not(e, s, now) for e, s in recent[:MAX_LISTED]]
            listed = [self._facts(e, s, now) for e, s in recent[:MAX_LISTED]]
        if not connected:
            missing.insert(0, "the gateway is not connected to the broker")
        ok = not missing
        body: dict[str, Any] = {"status": "ready" if ok else "unavailable"}
        if not ok:
            body["missing"] = missing
        body["edges"] = listed
        return ok, body
