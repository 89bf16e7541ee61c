"""What a round's timing means, computed in one place for the edge and the controller.

The edge acts on the delay it last measured and the controller learns from the
same number: both call `one_way_delay_ms` / `outcome_of` on the round's
TimingEvent, so what is learned and what is acted on cannot drift apart.
"""
from __future__ import annotations

from dataclasses import fields as dataclass_fields
from typing import Any

from control import RoundContext, RoundOutcome
from schemas.messages import TimingEvent


def network_ms(round_ms: float, edge_queue_ms: float, draft_ms: float, verify_ms: float, queue_ms: float) -> float:
    """The part of a round spent between the nodes: everything the edge timed minus compute and queues."""
    return max(0.0, round_ms - edge_queue_ms - draft_ms - verify_ms - queue_ms)


def one_way_delay_ms(network: float) -> float:
    """Half the round's network time (a round pays the delay once each way)."""
    return max(0.0, network) / 2.0


def outcome_of(ev: TimingEvent) -> RoundOutcome:
    """The policy outcome of one round, as the edge (local learning) and the controller see it."""
    return RoundOutcome(ev.length, ev.accepted, ev.round_ms,
                        RoundContext(one_way_delay_ms(ev.network_ms), ev.channel_state))


def round_log_fields(ev: TimingEvent) -> dict[str, Any]:
    """The edge's `round` log line: the timing event's own fields (README names them), with
    `length` logged as `draft_length` and the stream counter `seq` left out."""
    fields = {f.name: getattr(ev, f.name) for f in dataclass_fields(ev)}  # all scalars: asdict's deep copy
    fields["draft_length"] = fields.pop("length")                          # cost 20x more, once a round
    fields.pop("seq")
    return fields
