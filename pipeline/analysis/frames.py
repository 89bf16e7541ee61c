"""A run's JSON-lines logs as polars data frames.

Each log file is read as raw lines; `$.event` is matched per line (polars,
in Rust, in parallel), so a line that is not a JSON object is counted as bad
and skipped, never guessed at. Round and verify events are then decoded with
a fixed schema in one pass; only when that pass meets a value of the wrong
type (a hand-edited or damaged line that is still JSON) are the fields taken
one by one with lenient casts, and the rows missing a required field are
counted as bad too. A million round lines take a few seconds
(`specstop bench analysis`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline.errors import PipelineError

ROUND_SCHEMA: dict[str, pl.DataType] = {
    "node": pl.Utf8, "request_id": pl.Utf8, "round": pl.Int64, "attempt": pl.Int64, "edge_id": pl.Utf8,
    "verifier_id": pl.Utf8, "draft_length": pl.Int64, "accepted": pl.Int64, "tokens": pl.Int64,
    "round_ms": pl.Float64, "draft_ms": pl.Float64, "verify_ms": pl.Float64, "queue_ms": pl.Float64,
    "network_ms": pl.Float64, "delay_ms": pl.Float64, "told_delay_ms": pl.Float64, "edge_queue_ms": pl.Float64, "link_ms": pl.Float64,
    "stall_ms": pl.Float64, "draft_real_ms": pl.Float64, "verify_real_ms": pl.Float64, "emulated": pl.Boolean,
    "policy": pl.Utf8, "policy_version": pl.Int64, "channel_state": pl.Utf8, "context_resent": pl.Boolean,
    "context_len": pl.Int64, "ts": pl.Utf8, "stop_scores": pl.List(pl.Float64),
    "tree_depth": pl.Int64,  # tree rounds only (draft_length is then the tree's node count)
}
REQUIRED = ("request_id", "draft_length", "accepted", "round_ms", "policy")
VERIFY_SCHEMA: dict[str, pl.DataType] = {
    "node": pl.Utf8, "request_id": pl.Utf8, "round": pl.Int64, "verifier_id": pl.Utf8, "draft_length": pl.Int64,
    "accepted": pl.Int64, "verify_ms": pl.Float64, "prefill_ms": pl.Float64, "queue_ms": pl.Float64,
    "sessions": pl.Int64,
}


@dataclass
class RunFrames:
    rounds: pl.DataFrame            # edge `round` events, one row per round (all edges)
    verifies: pl.DataFrame          # cloud `verify` events
    events: dict[str, int]          # every event name and its count
    bad_lines: dict[str, int] = field(default_factory=dict)  # per file: lines that are not usable JSON
    files: list[str] = field(default_factory=list)


def _lines(path: Path) -> pl.DataFrame:
    try:
        return pl.read_csv(path, has_header=False, separator="\x1f", quote_char=None, new_columns=["line"],
                           schema_overrides={"line": pl.Utf8}, truncate_ragged_lines=True)
    except pl.exceptions.NoDataError:
        return pl.DataFrame({"line": []}, schema={"line": pl.Utf8})
    except OSError as exc:
        raise PipelineError(f"cannot read log '{path}' ({exc})") from None


def _decode(lines: pl.DataFrame, schema: dict[str, pl.DataType], required: tuple[str, ...]) -> tuple[pl.DataFrame, int]:
    """(rows, bad) from lines known to be JSON objects of one event."""
    if lines.is_empty():
        return pl.DataFrame(schema=schema), 0
    try:
        rows = lines.select(pl.col("line").str.json_decode(pl.Struct(schema)).alias("j")).unnest("j")
    except pl.exceptions.ComputeError:  # a value of the wrong type somewhere: field by field, leniently
        rows = lines.select([_lenient(name, dtype) for name, dtype in schema.items()])
    ok = rows.filter(pl.all_horizontal([pl.col(c).is_not_null() for c in required]))
    return ok, len(rows) - len(ok)


def _lenient(name: str, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.List):  # a damaged line's list is dropped, not guessed at
        return pl.lit(None, dtype).alias(name)
    raw = pl.col("line").str.json_path_match(f"$.{name}")
    if dtype == pl.Boolean:
        return pl.when(raw == "true").then(True).when(raw == "false").then(False).otherwise(None).alias(name)
    return raw.cast(dtype, strict=False).alias(name)


def load_run(run_dir: str | Path) -> RunFrames:
    d = Path(run_dir)
    if not d.is_dir():
        raise PipelineError(f"run directory '{run_dir}' does not exist")
    files = sorted(d.glob("*.jsonl"))
    if not files:
        raise PipelineError(f"no *.jsonl logs in {run_dir}")
    rounds, verifies, events, bad = [], [], {}, {}
    for path in files:
        lines = _lines(path).with_columns(pl.col("line").str.json_path_match("$.event").alias("event"))
        nonblank = lines.filter(pl.col("line").str.strip_chars() != "")
        bad[path.name] = nonblank["event"].null_count()
        for name, n in nonblank.group_by("event").len().drop_nulls().iter_rows():
            events[name] = events.get(name, 0) + n
        r, bad_r = _decode(nonblank.filter(pl.col("event") == "round"), ROUND_SCHEMA, REQUIRED)
        v, bad_v = _decode(nonblank.filter(pl.col("event") == "verify"), VERIFY_SCHEMA, ("request_id", "verify_ms"))
        bad[path.name] += bad_r + bad_v
        rounds.append(r)
        verifies.append(v)
    return RunFrames(pl.concat(rounds, how="vertical_relaxed"), pl.concat(verifies, how="vertical_relaxed"),
                     events, {k: v for k, v in bad.items() if v}, [p.name for p in files])


def rounds_frame(rows: list[dict]) -> pl.DataFrame:
    """Round dicts (timing events, or log lines already in memory) as a frame with the log schema."""
    cols = {name: [r.get(name) for r in rows] for name in ROUND_SCHEMA}
    return pl.DataFrame(cols, schema=ROUND_SCHEMA, strict=False)
