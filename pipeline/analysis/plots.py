"""PNG plots of simulation and run results (matplotlib, headless)."""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def plot_simulation(result: dict, out_dir: Path) -> list[str]:
    """One figure per scenario: regret curves (log-log) and ms/token gap per policy."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for sc in result["scenarios"]:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for spec, v in sc["policies"].items():
            xs = [p[0] for p in v["regret_curve"]]
            ys = [max(p[1], 1e-3) for p in v["regret_curve"]]
            ax1.plot(xs, ys, marker=".", label=spec)
        ax1.set(xscale="log", yscale="log", xlabel="round", ylabel="regret (ms)", title=f"{result['profile']}: {sc['label']}")
        ax1.legend(fontsize=8)
        specs = list(sc["policies"])
        gaps = [sc["policies"][s]["gap_pct"] for s in specs]
        ax2.barh(specs, gaps, color=["tab:green" if g < 1 else "tab:orange" for g in gaps])
        ax2.set(xlabel="gap to oracle (%)", title=f"oracle {sc['oracle']['ms_per_token']:.1f} ms/token")
        fig.tight_layout()
        path = out_dir / f"{_slug(result['profile'])}-{_slug(sc['label'])}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(str(path))
    return written


def plot_run(run_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Per-round view of a run: round time over the run by channel state, and lengths chosen vs delay
    (speculative rounds only: target-only rounds are a baseline, not a choice)."""
    import polars as pl

    from pipeline.analysis import load_run

    rounds = load_run(run_dir).rounds.filter(pl.col("draft_length") > 0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    states = sorted(str(s) for s in rounds["channel_state"].unique().to_list())
    for s in states:
        rs = rounds.filter(pl.col("channel_state").cast(pl.Utf8).fill_null("None") == s)
        ax1.scatter(range(len(rs)), rs["round_ms"].to_list(), s=4, label=f"state {s}")
        ax2.scatter(rs["delay_ms"].fill_null(0).to_list(), rs["draft_length"].to_list(), s=8, alpha=0.3)
    ax1.set(xlabel="round (per state)", ylabel="round ms", title="round time")
    ax1.legend(fontsize=8)
    ax2.set(xlabel="one-way delay (ms)", ylabel="draft length", title="lengths chosen")
    fig.tight_layout()
    path = out / "run-rounds.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [str(path)]
