"""The metrics of each worker kind, and how each log event updates them.

Names start `specstop_<kind>_`; times are histograms in seconds (the logs carry ms). Errors:
a warning/error event that carries a `code` field (the error code sent to or refused from a peer:
`overloaded`, `too_long`, `no_verifier`, ...) counts in `..._errors_total{code}`; every other
warning/error event counts in `..._warnings_total{event}`.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas.messages import ERROR_CODES

# ms-scale rounds on loopback up to multi-second rounds on an emulated slow link
TIME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MAX_POSITIONS = 64  # acceptance per position is kept for positions 1..64


class WorkerMetrics:
    kind = "worker"

    def __init__(self, node_id: str):
        self.node_id = node_id
        self.registry = CollectorRegistry()
        self.server = None  # the MetricsServer serving this registry, once started
        k = self.kind
        self.events = Counter(f"specstop_{k}_log_events", "log events emitted, by event name",
                              ["event"], registry=self.registry)
        self.errors = Counter(f"specstop_{k}_errors", "error codes sent or refused (warning/error events with a code)",
                              ["code"], registry=self.registry)
        self.warnings = Counter(f"specstop_{k}_warnings", "other warning/error events", ["event"],
                                registry=self.registry)
        self.tap_failures = Counter(f"specstop_{k}_metrics_failures", "log events the metrics could not read",
                                    registry=self.registry)
        self._handlers: dict[str, Callable[[dict], None]] = {}
        self._event_children: dict[str, Any] = {}

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(f"specstop_{self.kind}_{name}", doc, list(labels), registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"specstop_{self.kind}_{name}", doc, list(labels), registry=self.registry)

    def _hist(self, name: str, doc: str, buckets=TIME_BUCKETS, labels: tuple[str, ...] = ()) -> Histogram:
        return Histogram(f"specstop_{self.kind}_{name}", doc, list(labels), buckets=buckets, registry=self.registry)

    def observe(self, level: str, event: str, fields: dict[str, Any]) -> None:
        child = self._event_children.get(event)
        if child is None:
            child = self._event_children[event] = self.events.labels(event)
        child.inc()
        handler = self._handlers.get(event)
        if handler is not None:
            handler(fields)
        if level in ("warning", "error"):
            code = fields.get("code")
            if code is None and event in ERROR_CODES:
                code = event
            if code is None and event == "internal_error":
                code = "internal"
            if isinstance(code, str):
                self.errors.labels(code).inc()
            else:
                self.warnings.labels(event).inc()

    def bind(self, worker: Any) -> None:
        """Gauges read off the worker object at scrape time."""


def _s(fields: dict, key: str) -> float:
    return max(0.0, float(fields.get(key) or 0.0)) / 1e3


class EdgeMetrics(WorkerMetrics):
    kind = "edge"

    def __init__(self, node_id: str):
        super().__init__(node_id)
        e = ("edge",)
        self.rounds = self._counter("rounds", "rounds completed (one `round` log line each)", ("edge", "policy"))
        self.drafted = self._counter("drafted_tokens", "draft tokens sent for verification", ("edge", "policy"))
        self.accepted = self._counter("accepted_tokens", "draft tokens the verifier accepted", ("edge", "policy"))
        self.emitted = self._counter("emitted_tokens", "tokens streamed to clients (accepted + one per round)", e)
        self.pos_drafted = self._counter("position_drafted", "rounds that drafted a token at this position",
                                         ("edge", "position"))
        self.pos_accepted = self._counter("position_accepted", "rounds whose draft token at this position was "
                                                               "accepted (acceptance = accepted / drafted)",
                                          ("edge", "position"))
        self.round_s = self._hist("round_seconds", "round time (failed attempts excluded)", labels=e)
        self.draft_s = self._hist("draft_seconds", "drafting time per round", labels=e)
        self.verify_s = self._hist("verify_seconds", "verify time reported by the verifier", labels=e)
        self.network_s = self._hist("network_seconds", "round - edge queue - draft - verify - verifier queue",
                                    labels=e)
        self.draft_length = self._gauge("draft_length", "draft length of the last round", e)
        self.measured_delay = self._gauge("measured_delay_seconds", "one-way delay measured in the last round (network / 2; the edge acts on the median of its last five)", e)
        self.link_delay = self._gauge("link_delay_seconds", "emulated one-way link delay of the last round", e)
        self.channel_state = self._gauge("channel_state", "1 for the channel state of the last round, 0 for others",
                                         ("edge", "state"))
        self.length_by_state = self._gauge("draft_length_by_state", "draft length of the last round in each "
                                                                    "channel state", ("edge", "state"))
        self.policy_version = self._gauge("policy_version", "policy version the last round acted on",
                                          ("edge", "policy"))
        self.requests = self._counter("requests", "requests ended, by outcome (eos, length, stop, cancelled, "
                                                  "or the error code)",
                                      ("edge", "outcome"))
        self.retries = self._counter("round_retries", "round attempts sent again", e)
        self.updates = self._counter("policy_updates", "policy updates applied", e)
        self._states: set[str] = set()
        self._state: str | None = None
        self._by_policy: dict[str, tuple] = {}
        self._by_state: dict[str, Any] = {}
        self._positions: list[tuple] = []
        self._edge = tuple(m.labels(node_id) for m in (self.emitted, self.round_s, self.draft_s, self.verify_s,
                                                       self.network_s, self.draft_length, self.measured_delay,
                                                       self.link_delay))
        self._handlers = {"round": self._round, "request_done": self._done, "request_failed": self._failed,
                          "request_finished": lambda f: self.requests.labels(self.node_id, str(f.get("reason"))).inc(),
                          "request_cancelled": lambda f: self.requests.labels(self.node_id, "cancelled").inc(),
                          "round_retry": lambda f: self.retries.labels(self.node_id).inc(),
                          "policy_update": lambda f: self.updates.labels(self.node_id).inc()}

    def _children(self, policy: str) -> tuple:
        """Label children resolved once (a `labels()` lookup costs ~1 us; a round touches ~20 metrics)."""
        got = self._by_policy.get(policy)
        if got is None:
            edge = self.node_id
            got = self._by_policy[policy] = (self.rounds.labels(edge, policy), self.drafted.labels(edge, policy),
                                             self.accepted.labels(edge, policy),
                                             self.policy_version.labels(edge, policy))
        return got

    def _position(self, i: int) -> tuple:
        while len(self._positions) < i:
            p = str(len(self._positions) + 1)
            self._positions.append((self.pos_drafted.labels(self.node_id, p), self.pos_accepted.labels(self.node_id, p)))
        return self._positions[i - 1]

    def _round(self, f: dict) -> None:
        policy = str(f.get("policy", ""))
        length, accepted = int(f.get("draft_length", 0)), int(f.get("accepted", 0))
        rounds, drafted, acc, version = self._children(policy)
        rounds.inc()
        drafted.inc(length)
        acc.inc(accepted)
        version.set(float(f.get("policy_version", 0)))
        emitted, round_s, draft_s, verify_s, network_s, draft_length, measured, link = self._edge
        emitted.inc(int(f.get("tokens", 0)))
        for i in range(1, min(length, MAX_POSITIONS) + 1):
            d, a = self._position(i)
            d.inc()
            if i <= accepted:
                a.inc()
        network = _s(f, "network_ms")
        round_s.observe(_s(f, "round_ms"))
        draft_s.observe(_s(f, "draft_ms"))
        verify_s.observe(_s(f, "verify_ms"))
        network_s.observe(network)
        draft_length.set(length)
        measured.set(network / 2)
        link.set(_s(f, "delay_ms"))
        state = f.get("channel_state")
        if state is not None:
            state = str(state)
            by_state = self._by_state.get(state)
            if by_state is None:
                by_state = self._by_state[state] = self.length_by_state.labels(self.node_id, state)
            by_state.set(length)
            if state != self._state:
                self._state = state
                self._states.add(state)
                for s in self._states:
                    self.channel_state.labels(self.node_id, s).set(1.0 if s == state else 0.0)

    def _done(self, f: dict) -> None:
        self.requests.labels(self.node_id, str(f.get("finish_reason"))).inc()

    def _failed(self, f: dict) -> None:
        self.requests.labels(self.node_id, str(f.get("code"))).inc()

    def bind(self, worker: Any) -> None:
        live = self._gauge("requests_in_flight", "requests held (generating or queued)", ("edge",))
        live.labels(self.node_id).set_function(lambda: len(worker.live))
        active = self._gauge("requests_active", "requests generating (holding an active slot)", ("edge",))
        active.labels(self.node_id).set_function(lambda: sum(1 for lv in list(worker.live.values()) if lv.started))


class CloudMetrics(WorkerMetrics):
    kind = "cloud"

    def __init__(self, node_id: str):
        super().__init__(node_id)
        v = ("verifier",)
        self.verifies = self._counter("verifies", "rounds verified (one `verify` log line each)", v)
        self.drafted = self._counter("drafted_tokens", "draft tokens verified", v)
        self.accepted = self._counter("accepted_tokens", "draft tokens accepted", v)
        self.resent = self._counter("context_rebuilds", "rounds that rebuilt a session from a resent context", v)
        self.verify_s = self._hist("verify_seconds", "verify time per round (device time under emulation)", labels=v)
        self.queue_s = self._hist("queue_seconds", "wait between receiving a draft and its compute", labels=v)
        self.prefill_s = self._hist("prefill_seconds", "prefill time of rounds that built a session", labels=v)
        self.batch = self._hist("batch_size", "rounds in the batched forward a round ran in", BATCH_BUCKETS, labels=v)
        self.sessions_ended = self._counter("sessions_ended", "sessions ended, by reason (final, ttl)",
                                            ("verifier", "reason"))
        self.evicted = self._counter("sessions_evicted", "idle sessions evicted to make room", v)
        self.joined = self._counter("retries_answered", "retries answered without computing (joined or resent)", v)
        self._mine = tuple(m.labels(node_id) for m in (self.verifies, self.drafted, self.accepted, self.resent,
                                                       self.verify_s, self.queue_s, self.prefill_s, self.batch))
        self._handlers = {"verify": self._verify, "session_end": self._end,
                          "session_evicted": lambda f: self.evicted.labels(self.node_id).inc(),
                          "joined_in_flight": lambda f: self.joined.labels(self.node_id).inc(),
                          "verdict_resent": lambda f: self.joined.labels(self.node_id).inc()}

    def _verify(self, f: dict) -> None:
        verifies, drafted, accepted, resent, verify_s, queue_s, prefill_s, batch = self._mine
        verifies.inc()
        drafted.inc(int(f.get("draft_length", 0)))
        accepted.inc(int(f.get("accepted", 0)))
        if f.get("context_resent"):
            resent.inc()
        verify_s.observe(_s(f, "verify_ms"))
        queue_s.observe(_s(f, "queue_ms"))
        if f.get("prefill_ms"):
            prefill_s.observe(_s(f, "prefill_ms"))
        batch.observe(int(f.get("batch_size", 1) or 1))

    def _end(self, f: dict) -> None:
        self.sessions_ended.labels(self.node_id, str(f.get("reason"))).inc()

    def bind(self, worker: Any) -> None:
        self._gauge("sessions", "verifier sessions held", ("verifier",)).labels(self.node_id).set_function(
            lambda: len(worker.sessions))
        self._gauge("rounds_in_flight", "rounds whose compute has not finished", ("verifier",)).labels(
            self.node_id).set_function(lambda: worker.computing)


class ControlMetrics(WorkerMetrics):
    kind = "control"

    def __init__(self, node_id: str):
        super().__init__(node_id)
        self.applied = self._counter("events_applied", "timing events learned from")
        self.batches = self._counter("updates_batches", "batches that published policy updates")
        self.version = self._gauge("policy_version", "latest policy version published", ("edge", "policy"))
        self._applied_total = 0
        self._handlers = {"updates_published": self._published}

    def _published(self, f: dict) -> None:
        total = int(f.get("applied_total", 0))
        if total > self._applied_total:
            self.applied.inc(total - self._applied_total)
        self._applied_total = max(total, self._applied_total)
        self.batches.inc()
        for key, version in (f.get("versions") or {}).items():
            edge, _, policy = str(key).partition("/")
            self.version.labels(edge, policy).set(float(version))

    def bind(self, worker: Any) -> None:
        self._gauge("learners", "learners in memory").set_function(lambda: len(worker.learners))


class GatewayMetrics(WorkerMetrics):
    kind = "gateway"

    def __init__(self, node_id: str):
        super().__init__(node_id)
        self.requests = self._counter("requests", "HTTP responses (every one but /health and /metrics probes), "
                                      "by endpoint and status", ("endpoint", "status"))
        self.ttft = self._hist("time_to_first_token_seconds", "request received -> first token sent",
                               labels=("endpoint",))
        self.duration = self._hist("request_seconds", "request received -> last byte", labels=("endpoint",))
        self.prompt_tokens = self._counter("prompt_tokens", "prompt tokens of completed requests")
        self.completion_tokens = self._counter("completion_tokens", "tokens generated for completed requests")
        self.rounds = self._counter("rounds", "speculation rounds of completed requests (from edge timing events)")
        self.disconnects = self._counter("client_disconnects", "generations cancelled because the client left")
        self.refused = self._counter("connections_refused", "connections closed before a request: slow or "
                                     "oversized head, too many connections, not HTTP, unread body", ("reason",))
        self._handlers = {"http_request": self._request,
                          "http_refused": lambda f: self.refused.labels(str(f.get("code"))).inc()}

    def _request(self, f: dict) -> None:
        ep = str(f.get("endpoint"))
        self.requests.labels(ep, str(f.get("status"))).inc()
        if f.get("ttft_ms") is not None:
            self.ttft.labels(ep).observe(_s(f, "ttft_ms"))
        self.duration.labels(ep).observe(_s(f, "total_ms"))
        self.prompt_tokens.inc(int(f.get("prompt_tokens") or 0))
        self.completion_tokens.inc(int(f.get("completion_tokens") or 0))
        self.rounds.inc(int(f.get("rounds") or 0))
        if f.get("code") == "client_gone":
            self.disconnects.inc()

    def bind(self, worker: Any) -> None:
        self._gauge("requests_in_flight", "HTTP generations running").set_function(lambda: len(worker.running))
        self._gauge("body_bytes_held", "bytes of request bodies being read or parsed").set_function(
            lambda: worker.budget.held)
        self._gauge("ready", "1 when /health answers 200 (an edge heard, not draining, hearing a verifier)"
                    ).set_function(lambda: float(worker.readiness.verdict(time.monotonic(),
                                                                          worker.nc.is_connected)[0]))

    def bind_http(self, server_state: Any) -> None:
        """uvicorn's server state: its open connections."""
        self._gauge("connections", "HTTP connections open").set_function(lambda: len(server_state.connections))


KINDS = {m.kind: m for m in (EdgeMetrics, CloudMetrics, ControlMetrics, GatewayMetrics)}
