"""Prometheus metrics for every worker, read off the JSON log events the workers already emit.

A worker's logger is wrapped (`TappedLog`): every `log.info/warning/error(event, **fields)` first
updates the worker's metrics from the same event, then renders the log line as before. The
counters therefore cannot drift from the round logs (one `round` line = one round counted), and
the workers need no metrics code of their own. Gauges that describe state rather than events
(requests in flight, sessions, learners) read the worker object when scraped (`bind`).

Each worker has its own `CollectorRegistry` (tests run several workers in one process), served on
`--metrics HOST:PORT` by prometheus_client's threaded HTTP server (`serve`).
"""
from __future__ import annotations

from pipeline.metrics.server import MetricsServer, parse_hostport, serve
from pipeline.metrics.tap import TappedLog, tap
from pipeline.metrics.workers import CloudMetrics, ControlMetrics, EdgeMetrics, GatewayMetrics, WorkerMetrics

__all__ = ["CloudMetrics", "ControlMetrics", "EdgeMetrics", "GatewayMetrics", "MetricsServer", "TappedLog",
           "WorkerMetrics", "parse_hostport", "serve", "tap"]
