"""What a round's timing means, computed in one place for the edge, the in-process loop and the
controller.

A round's time is built by one rule per source (`measured_round_times` on the edge's clock,
`modeled_round_times` in the in-process loop, where the link is arithmetic) and read by one
(`network_ms`: the round minus compute and queues). The edge acts on the delay it measured in its
last rounds (`DelayEstimate`) and the controller learns from the same per-round numbers: both call
`one_way_delay_ms` / `outcome_of` on the round's TimingEvent, so what is learned and what is acted
on cannot drift apart.
"""
from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

from control import RoundContext, RoundOutcome
from schemas.messages import TimingEvent


@dataclass
class RoundTimes:
    """What the edge's clock measured for the round (ms)."""

    round_ms: float        # draft start -> verdict applied, failed attempts excluded
    draft_ms: float
    edge_queue_ms: float = 0.0
    link_ms: float = 0.0   # emulated link time slept in the successful attempt
    stall_ms: float = 0.0  # failed attempts and backoff
    draft_real_ms: float | None = None  # this machine's drafting time when draft_ms is a device's


def measured_round_times(elapsed_ms: float, draft_ms: float, edge_queue_ms: float, link_ms: float,
                         stall_ms: float, draft_real_ms: float | None = None) -> RoundTimes:
    """The edge's round from its clock (`elapsed_ms`: draft start to verdict). Failed attempts and
    backoff (`stall_ms`) are not the round's: a retry's cost is not the policy's length's. With a
    virtual device of its own (`draft_real_ms` given: draft_ms is the device's time) waiting for this
    machine's CPU is device time, already in draft_ms, so the edge queue counts nothing."""
    return RoundTimes(elapsed_ms - stall_ms, draft_ms, 0.0 if draft_real_ms is not None else edge_queue_ms,
                      link_ms, stall_ms, draft_real_ms)


def stall_time_ms(first_sent_s: float, answered_began_s: float, attempt: int) -> float:
    """Time lost before the attempt that was answered began (failed attempts, backoff, failover):
    none when the first attempt was answered."""
    return (answered_began_s - first_sent_s) * 1e3 if attempt else 0.0


def modeled_round_times(draft_ms: float, verify_ms: float, queue_ms: float, one_way_ms: float) -> RoundTimes:
    """The in-process loop's round, the link modeled, not slept: compute, queue and the delay each way.
    `verify_ms` and `queue_ms` are the verdict's (verify includes the prefill of a rebuilt session),
    the ones `network_ms` subtracts, so the round's network time is exactly twice the delay."""
    return RoundTimes(draft_ms + verify_ms + queue_ms + 2.0 * one_way_ms, draft_ms)


def network_ms(round_ms: float, edge_queue_ms: float, draft_ms: float, verify_ms: float, queue_ms: float) -> float:
    """The part of a round spent between the nodes: everything the edge timed minus compute and queues."""
    return max(0.0, round_ms - edge_queue_ms - draft_ms - verify_ms - queue_ms)


def one_way_delay_ms(network: float) -> float:
    """Half the round's network time (a round pays the delay once each way)."""
    return max(0.0, network) / 2.0


class DelayEstimate:
    """The one-way delay a policy is told before a round: the median of the edge's last few
    measurements (from all its requests). One round's network time also holds whatever event loops
    and the broker spent: live, with 40 requests in flight on 2 cores and a 10 ms link, single
    rounds measured p90 21 ms and p99 38 ms, and a policy told such an outlier drafts a longer
    round for a delay that is not there. A median of five ignores two outliers in a row and
    follows a lasting change within three rounds."""

    def __init__(self, window: int = 5):
        self._last: deque[float] = deque(maxlen=window)

    def add(self, one_way_ms: float) -> None:
        self._last.append(one_way_ms)

    @property
    def ms(self) -> float:
        return statistics.median(self._last) if self._last else 0.0

    @property
    def known(self) -> bool:
        """Whether anything was measured yet (before that, `ms` is a placeholder 0)."""
        return bool(self._last)


def outcome_of(ev: TimingEvent) -> RoundOutcome:
    """The policy outcome of one round, as the edge (local learning) and the controller see it. Its
    context is what the policy was told (`told_delay_ms`), so a policy learns how far the delay a
    round paid (network / 2, from the measured compute) strays from the told median of recent ones;
    an event without it (an older edge) stands for a policy told the delay the round paid."""
    told = one_way_delay_ms(ev.network_ms) if ev.told_delay_ms is None else ev.told_delay_ms
    return RoundOutcome(ev.length, ev.accepted, ev.round_ms, RoundContext(told, ev.channel_state),
                        measured_compute_ms=ev.edge_queue_ms + ev.draft_ms + ev.verify_ms + ev.queue_ms)


def round_log_fields(ev: TimingEvent) -> dict[str, Any]:
    """The edge's `round` log line: the timing event's own fields (README names them), with
    `length` logged as `draft_length` and the stream counter `seq` left out."""
    fields = {f.name: getattr(ev, f.name) for f in dataclass_fields(ev)}  # all scalars: asdict's deep copy
    fields["draft_length"] = fields.pop("length")                          # cost 20x more, once a round
    fields.pop("seq")
    return fields
