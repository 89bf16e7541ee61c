"""The JetStream objects the control plane lives on: the timing stream and the policy bucket.

Shared by the controller (which creates and sizes them) and the edges (which
re-create a missing stream after a broker restart, and read the bucket).
"""
from __future__ import annotations

from dataclasses import dataclass

from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from schemas import subjects


@dataclass(frozen=True)
class StreamLimits:
    """Bounds of the timing stream: whichever is hit first discards the oldest events."""

    max_msgs: int = 1_000_000
    max_bytes: int = 512 * 1024 * 1024
    max_age_s: float = 24 * 3600.0
    max_msg_size: int = 4096  # a timing event is ~400 bytes


def jetstream_of(nc):
    """JetStream context in the hub's domain when the connection was made with one (an edge on a leaf
    node reaches the hub's streams and buckets as `$JS.<domain>.API`; `pipeline.transport.bus.connect`
    records the domain on the connection), else the local one."""
    domain = getattr(nc, "specstop_js_domain", None)
    return nc.jetstream(domain=domain) if domain else nc.jetstream()


async def ensure_stream(js, limits: StreamLimits = StreamLimits(), update: bool = True) -> str:
    """Create the timing stream, or (with `update`) bring an existing one to `limits`; returns its
    identity (creation time). Edges pass update=False: they re-create a missing stream after a
    broker restart but never change the limits the controller set."""
    cfg = StreamConfig(name=subjects.TIMING_STREAM, subjects=[f"{subjects.TIMING_PREFIX}.>"],
                       storage=StorageType.FILE, max_age=limits.max_age_s, max_msgs=limits.max_msgs,
                       max_bytes=limits.max_bytes, max_msg_size=limits.max_msg_size, discard=DiscardPolicy.OLD)
    try:
        info = await js.add_stream(cfg)
    except BadRequestError:
        info = await (js.update_stream(cfg) if update else js.stream_info(subjects.TIMING_STREAM))
    return str(info.created or "")


async def policy_bucket(js):
    try:
        return await js.key_value(subjects.POLICY_BUCKET)
    except (NotFoundError, BadRequestError):
        return await js.create_key_value(bucket=subjects.POLICY_BUCKET, history=1, max_bytes=256 * 1024 * 1024)


async def bucket_keys(js, edge_id: str | None = None) -> list[str]:
    """The policy bucket's keys (one edge's only, with `edge_id`), from the stream's subject state in
    one request. nats-py's kv.keys() runs a key watcher and says "no keys" when its consumer reports
    nothing pending and nothing has arrived yet, so a first entry still in flight (across a leaf node,
    under load) reads as an empty bucket and the edge or controller starts from defaults (seen in a
    loaded suite run); the subject state has no such window. A key whose last entry is a delete
    marker is listed too: reading it says so. Raises NotFoundError when there is no bucket."""
    prefix = f"$KV.{subjects.POLICY_BUCKET}."
    info = await js.stream_info(f"KV_{subjects.POLICY_BUCKET}",
                                subjects_filter=f"{prefix}{edge_id}.>" if edge_id else f"{prefix}>")
    return sorted(s[len(prefix):] for s in (info.state.subjects or {}))
