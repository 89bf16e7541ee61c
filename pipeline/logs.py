"""structlog set-up: JSON lines to a file per node (data), a readable line per event on a console (people).

Each node gets its own wrapped logger (no global structlog state), so several
nodes can share a process (tests) without mixing their files. Two outputs:

- `log_file`: one JSON object per event, every event whatever the level, with
  stable field names documented in the README; analysis reads them back with
  json.loads, so nothing else is ever written there.
- the console (stderr): events at `level` or above (per-round events are
  `debug`, so a terminal is not flooded), rendered by structlog's
  ConsoleRenderer for people when the stream is a terminal (`auto`) or when
  asked (`console`), as JSON lines otherwise. With a `log_file` the console
  shows events only when it is a terminal or `console` is asked for: the file
  holds the data, the console would only repeat it.

The CLI sets the process's console level and format once (`set_console`, from
`--log-level` / `--log-format`); `configure` takes them unless told otherwise.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")
_RANK = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50, "exception": 40}

PROCESSORS = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", key="ts"),
    structlog.processors.format_exc_info,
]
_JSON = structlog.processors.JSONRenderer()


@dataclass
class Console:
    """What a node shows on its console: events at `level` or above, in `format` (auto/json/console)."""
    level: str = "info"
    format: str = "auto"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"log level '{self.level}' is not one of {', '.join(LEVELS)}")
        if self.format not in FORMATS:
            raise ValueError(f"log format '{self.format}' is not one of {', '.join(FORMATS)}")


_console = Console()


def set_console(level: str = "info", fmt: str = "auto") -> None:
    """The process's console settings, for the loggers configured after this call."""
    global _console
    _console = Console(level, fmt)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _console_renderer(colors: bool) -> structlog.dev.ConsoleRenderer:
    return structlog.dev.ConsoleRenderer(colors=colors, timestamp_key="ts", pad_event_to=22,
                                         exception_formatter=structlog.dev.plain_traceback)


def _short_time(event: dict) -> dict:
    """The console's copy: the time of day to the millisecond (the file keeps the full ISO stamp) and the
    node as the logger's name, so each line starts with who said it."""
    out = dict(event)
    ts = out.get("ts")
    if isinstance(ts, str) and "T" in ts:
        out["ts"] = ts.split("T", 1)[1][:12]
    if "node" in out:
        out["logger"] = out.pop("node")
    return out


def _to_sinks(logger: Any, method: str, event: dict) -> tuple[tuple, dict]:
    """Last processor: hand the event dict itself to `_Sinks`, which renders it once per output."""
    return (event,), {}


class _Sinks:
    """structlog's final logger: the event as a JSON line to the file (always), and to the console when its
    level passes, rendered for it."""

    def __init__(self, file: TextIO | None, console: TextIO | None, level: str, fmt: str):
        self.file, self.console = file, console
        self.min_rank = _RANK[level]
        self.shorten = fmt != "json"
        self.render = _JSON if not self.shorten or console is None else _console_renderer(colors=_is_tty(console))

    def msg(self, event: dict) -> None:
        if self.file is not None:
            self.file.write(_JSON(None, "", dict(event)) + "\n")
            self.file.flush()
        if self.console is not None and _RANK.get(str(event.get("level")), 20) >= self.min_rank:
            shown = _short_time(event) if self.shorten else dict(event)
            self.console.write(self.render(None, "", shown) + "\n")
            self.console.flush()

    info = warning = error = debug = critical = exception = log = msg


def configure(node: str, log_file: str | Path | None = None, *, level: str | None = None, fmt: str | None = None,
              stream: TextIO | None = None, echo: bool = False) -> Any:
    """A logger bound to `node`: every event as JSON to `log_file`, and to the console (`stream`, default
    stderr) those at `level` or above in `fmt` (defaults: the process's `set_console`). `echo`: the console
    shows events beside a `log_file` in every format (the broker's start line is its command's output)."""
    settings = Console(level or _console.level, fmt or _console.format)
    console = stream if stream is not None else sys.stderr
    rendering = settings.format if settings.format != "auto" else ("console" if _is_tty(console) else "json")
    file: TextIO | None = None
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file = open(log_file, "a", encoding="utf-8")
    shown = not log_file or echo or rendering == "console"  # JSON beside a JSON file would only repeat it
    sinks = _Sinks(file, console if shown else None, settings.level, rendering)
    return structlog.wrap_logger(sinks, processors=[*PROCESSORS, _to_sinks]).bind(node=node)
