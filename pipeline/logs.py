"""structlog set-up: one JSON object per line, to a file per node.

Field names are stable and documented in the README; analysis reads them back
with json.loads and never parses free text.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import structlog


def configure(node: str, log_file: str | Path | None, echo: bool = False) -> Any:
    """Return a logger bound to `node`, writing JSON lines to `log_file` (and stderr if echo)."""
    sink: TextIO
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        sink = open(log_file, "a", buffering=1, encoding="utf-8")
    else:
        sink = sys.stderr
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", key="ts"),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(sort_keys=False),
    ]
    structlog.configure(processors=processors, logger_factory=_Tee(sink, sys.stderr if echo and log_file else None),
                        cache_logger_on_first_use=False)
    return structlog.get_logger().bind(node=node)


class _Tee:
    def __init__(self, main: TextIO, extra: TextIO | None):
        self.main, self.extra = main, extra

    def __call__(self, *args) -> "_TeeLogger":
        return _TeeLogger(self.main, self.extra)


class _TeeLogger:
    def __init__(self, main: TextIO, extra: TextIO | None):
        self.main, self.extra = main, extra

    def msg(self, message: str) -> None:
        self.main.write(message + "\n")
        if self.extra is not None:
            self.extra.write(message + "\n")

    info = warning = error = debug = critical = exception = log = msg
