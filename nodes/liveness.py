"""Heartbeats on the wire: publish this worker's `AliveMsg` every interval, hear one role's peers.

The rules (who is gone, since when) live in `nodes.protocol.liveness.PeerTable`; this module only
decodes, checks that a heartbeat's body names the node its subject names (a worker may publish only
on its own subject, so the subject is what the broker vouches for), feeds the table, and once per
interval hands the worker a tick (`on_tick(now, since, beat)`: act on who is gone, forward the
encoded heartbeat as a keepalive). `since` is when we last could not hear: our last (re)connect,
or a tick that came more than `LATE_S` late (this process was stopped or starved, and heartbeats
that did arrive may still sit unread in the socket). Silence is not counted across either.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from nats.aio.msg import Msg

from nodes.protocol.liveness import PeerTable
from schemas import subjects
from schemas.codec import Limits, SchemaError, decode, encode
from schemas.messages import AliveMsg

Status = Callable[[], tuple[int, bool, int]]   # (load, draining, verifiers heard)
Tick = Callable[[float, float, bytes], Awaitable[None]]
LATE_S = 1.0  # a tick this much later than planned: we were not running, so we heard nobody


class Heartbeat:
    def __init__(self, nc: Any, log: Any, limits: Limits, role: str, node_id: str, listen_role: str,
                 peers: PeerTable, status: Status, on_tick: Tick, send: Callable[[str, bytes], Awaitable[bool]],
                 interval_s: float):
        self.nc, self.log, self.limits = nc, log, limits
        self.role, self.node_id, self.listen_role = role, node_id, listen_role
        self.peers, self.status, self.on_tick, self.send = peers, status, on_tick, send
        self.interval_s = interval_s
        self.seq = 0
        self.since = time.monotonic()  # our last (re)connect
        self._reconnects = nc.stats.get("reconnects", 0)
        self._planned = self.since
        self._prefix = f"{subjects.ALIVE_PREFIX}.{listen_role}"

    @property
    def subject(self) -> str:
        return subjects.edge_alive(self.node_id) if self.role == "edge" else subjects.verifier_alive(self.node_id)

    async def subscribe(self) -> Any:
        return await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_alive)

    async def _on_alive(self, msg: Msg) -> None:
        try:
            m: AliveMsg = decode(msg.data, self.limits, expect=(AliveMsg,))
            sender = subjects.sender_of(msg.subject, self._prefix)
            if m.role != self.listen_role or m.node_id != sender:
                raise SchemaError(f"alive: a {m.role} heartbeat for {m.node_id!r} on {msg.subject} "
                                  f"(this subject carries {self.listen_role} {sender!r} only)")
        except SchemaError as exc:
            self.log.warning("bad_message", code=exc.code, error=str(exc)[:300], replied=False, subject=msg.subject)
            return
        if self.peers.heard(m.node_id, time.monotonic(), m.load, m.draining):
            self.log.info("peer_back", role=m.role, node_id=m.node_id)

    def beat(self) -> bytes:
        load, draining, verifiers = self.status()
        self.seq += 1
        return encode(AliveMsg(self.role, self.node_id, self.seq, max(0, load), draining, max(0, verifiers)))

    async def run(self) -> None:
        """Every interval: note a reconnect, publish our heartbeat, hand the worker its tick."""
        while True:
            now = time.monotonic()
            reconnects = self.nc.stats.get("reconnects", 0)
            if not self.nc.is_connected or reconnects != self._reconnects or now - self._planned > LATE_S:
                self._reconnects, self.since = reconnects, now
            self._planned = now + self.interval_s
            data = self.beat()
            if self.nc.is_connected:
                await self.send(self.subject, data)
            try:
                await self.on_tick(now, self.since, data)
            except Exception as exc:  # a bug in a tick must not stop the heartbeats
                self.log.error("internal_error", where="liveness_tick", error=repr(exc)[:300])
            await asyncio.sleep(self.interval_s)
