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
