"""structlog set-up: one JSON object per line, to a file per node.

Each node gets its own wrapped logger (no global structlog state), so several
nodes can share a process (tests) without mixing their files. Field names are
stable and documented in the README; analysis reads them back with json.loads.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

PROCESSORS = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", key="ts"),
    structlog.processors.format_exc_info,
    structlog.processors.JSONRenderer(),
]


class _LineSink:
    """structlog's final logger: writes each rendered line and flushes it."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def msg(self, message: str) -> None:
        self.stream.write(message + "\n")
        self.stream.flush()

    info = warning = error = debug = critical = exception = log = msg


def configure(node: str, log_file: str | Path | None = None) -> Any:
    """A logger bound to `node`, writing JSON lines to `log_file` (stderr when None)."""
    stream: TextIO = sys.stderr
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_file, "a", encoding="utf-8")
    return structlog.wrap_logger(_LineSink(stream), processors=PROCESSORS).bind(node=node)
