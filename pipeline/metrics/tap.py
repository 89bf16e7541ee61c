"""A logger wrapper that feeds each event to a worker's metrics before logging it."""
from __future__ import annotations

from typing import Any

from pipeline.metrics.workers import WorkerMetrics


class TappedLog:
    """Forwards everything to the wrapped structlog logger; `debug`/`info`/`warning`/`error` events also go
    to `metrics.observe` first. A metrics failure is counted, never raised: it must not stop a round."""

    def __init__(self, log: Any, metrics: WorkerMetrics):
        self._log, self.metrics = log, metrics

    def _tap(self, level: str, event: str, fields: dict) -> None:
        try:
            self.metrics.observe(level, event, fields)
        except Exception:
            self.metrics.tap_failures.inc()

    def debug(self, event: str, **fields: Any) -> Any:
        self._tap("debug", event, fields)
        return self._log.debug(event, **fields)

    def info(self, event: str, **fields: Any) -> Any:
        self._tap("info", event, fields)
        return self._log.info(event, **fields)

    def warning(self, event: str, **fields: Any) -> Any:
        self._tap("warning", event, fields)
        return self._log.warning(event, **fields)

    def error(self, event: str, **fields: Any) -> Any:
        self._tap("error", event, fields)
        return self._log.error(event, **fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def tap(log: Any, metrics: WorkerMetrics | None) -> Any:
    """`log` wrapped for `metrics`, or `log` itself when metrics are off."""
    return log if metrics is None else TappedLog(log, metrics)
