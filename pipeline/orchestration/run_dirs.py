"""Run directories: one timestamped folder per run (logs, manifest, broker files), never reused."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path


def new_run_dir(root: str | Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    d = Path(root) / stamp
    n = 1
    while d.exists():
        n += 1
        d = Path(root) / f"{stamp}-{n}"
    d.mkdir(parents=True)
    return d
