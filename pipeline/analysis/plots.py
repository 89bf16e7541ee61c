"""PNG plots of simulation and run results (matplotlib, headless).

Every figure here and in the experiment report (`pipeline.experiments.report`)
draws a policy with `policy_style(spec)` (colour, marker, line style), so a
policy looks the same everywhere and every line of a figure can be told from
the others in print, in grey and by a colour-blind reader: colours from the
Okabe-Ito palette (families) or sampled along viridis (fixed:K, whose
luminance rises with K), and a marker and line style per policy on top.
Intervals are 95 %: across seeds for the simulator (Student t on the seeds'
standard error), bootstrap over requests for runs and experiments. Regret is
cumulative and drawn on a symmetric-log axis, so zero and negative regret (a
policy ahead of the oracle) show as they are, never clipped.
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.analysis.frames import load_run  # noqa: E402
from pipeline.analysis.report import analyze_frames  # noqa: E402

TARGET_ONLY = "target-only"
REGRET_LABEL = "cumulative regret (ms)"

# Okabe-Ito (colour-blind safe); a family's variants are lighter or darker versions of its colour.
OKABE_ITO = {"black": "#000000", "orange": "#e69f00", "sky": "#56b4e9", "green": "#009e73", "yellow": "#f0e442",
             "blue": "#0072b2", "vermillion": "#d55e00", "purple": "#cc79a7"}
_FAMILY_COLORS = {
    "auto": OKABE_ITO["blue"], "auto-blind": OKABE_ITO["sky"],
    "ucb-specstop": OKABE_ITO["orange"], "ucb-specstop-scaled": "#f5c766", "ucb-specstop-ctx": "#8a5f00",
    "naive-ucb": OKABE_ITO["vermillion"], "naive-ucb-scaled": "#ee9e66",
    "hf-heuristic": OKABE_ITO["green"], "hf-confidence": "#66c5ab",
    "specdec++": OKABE_ITO["purple"], "specdec++-delay": "#7a4964",
    "static": "#b8a300", "oracle": OKABE_ITO["black"], TARGET_ONLY: "#7f7f7f",
}
_SPARE = ("#3f3f3f", "#004466", "#a35200", "#005c46", "#9a8f00", "#33a1e0", "#b35a8a", "#bfbfbf")
_SHADES = (-0.35, -0.18, 0.18, 0.35)  # < 0 darker, > 0 lighter
# One marker per family (and per K of fixed:K); line styles cycle beside them, so no two policies of a figure
# share both.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "p", "<", ">", "d", "H", "8")
LINESTYLES = ("-", "--", "-.", ":")
_FAMILY_MARKERS = {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(_FAMILY_COLORS)}
_FAMILY_LINESTYLES = {name: 0 if name in ("oracle", TARGET_ONLY) else i % len(LINESTYLES)
                      for i, name in enumerate(_FAMILY_COLORS)}  # indices: a family's variants take another


def policy_color(spec: str) -> str:
    """The colour of a policy spec in every figure (a hex string; deterministic across processes).

    `fixed:K` runs along viridis by K (1 dark purple ... 8+ green: dark to light, so grey keeps the
    order), the others by family."""
    spec = str(spec).strip()
    name, _, arg = spec.partition(":")
    if name == "fixed":
        return mcolors.to_hex(plt.get_cmap("viridis")(0.85 * min(_fixed_k(arg) - 1, 7) / 7))
    base = _FAMILY_COLORS.get(name)
    if base is None:
        return _SPARE[zlib.crc32(spec.encode()) % len(_SPARE)]
    if not arg:
        return base
    shade = _SHADES[zlib.crc32(arg.encode()) % len(_SHADES)]
    rgb = np.array(mcolors.to_rgb(base))
    rgb = rgb + (1.0 - rgb) * shade if shade > 0 else rgb * (1.0 + shade)
    return mcolors.to_hex(np.clip(rgb, 0.0, 1.0))


def _fixed_k(arg: str) -> int:
    try:
        return max(int(arg), 1)
    except ValueError:
        return 1


def policy_style(spec: str) -> dict:
    """Colour, marker and line style of a policy's line (`ax.plot(..., **policy_style(p))`). fixed:1..32
    have pairwise distinct (marker, line style), none of fixed:1..16 a family's; every family has its own
    marker."""
    spec = str(spec).strip()
    name, _, arg = spec.partition(":")
    if name == "fixed":
        i = _fixed_k(arg) - 1
        # the line styles run two steps ahead of the families' (which take marker j and style j % 4), so up
        # to fixed:16 no fixed length shares a family's (marker, line style) in a figure that has both
        marker, ls = MARKERS[i % 8], LINESTYLES[(i + 2 + i // 8) % len(LINESTYLES)]
    else:
        h = zlib.crc32(spec.encode())
        marker = _FAMILY_MARKERS.get(name) or MARKERS[h % len(MARKERS)]
        own = _FAMILY_LINESTYLES.get(name, h % len(LINESTYLES))
        ls = LINESTYLES[own if not arg else (own + 1 + h % (len(LINESTYLES) - 1)) % len(LINESTYLES)]
    return {"color": policy_color(spec), "marker": marker, "linestyle": ls}


def grey_level(color) -> float:
    """The colour's luminance (0 black .. 1 white) as a greyscale print shows it (Rec. 601 weights)."""
    r, g, b = mcolors.to_rgb(color)
    return 0.299 * r + 0.587 * g + 0.114 * b


def t95(df: int) -> float:
    """Two-sided 95 % Student t quantile (df >= 1); 1.96 + 2.4/df past the table."""
    table = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
             2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)
    return table[df - 1] if 1 <= df <= len(table) else 1.96 + 2.4 / max(df, 1)


def symlog_regret(ax, values, what: str = REGRET_LABEL) -> None:
    """A symmetric-log y axis for cumulative regret: linear within +-linthresh around 0, so zero and
    negative regret are drawn where they are; a line at zero."""
    v = np.abs(np.asarray([x for x in values if x is not None and np.isfinite(x)], float))
    top = float(v.max()) if len(v) else 1.0
    linthresh = max(1.0, 10.0 ** np.floor(np.log10(max(top, 1.0))) / 100.0)
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.axhline(0, color="black", lw=0.8, zorder=1)
    ax.set_ylabel(f"{what}\nsymlog: linear within ±{linthresh:g}, < 0 = ahead of the oracle", fontsize=8)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def phase_marks(scenario, profile) -> list[tuple[float, float]]:
    """(round, new delay ms) at each change of delay in a simulator scenario, in the oracle's rounds
    (policies play at their own pace in wall-clock scenarios, so the oracle's is the reference)."""
    d = np.asarray(scenario.delays, float)
    change = np.flatnonzero(np.diff(d) != 0) + 1  # segment indices where the delay changes
    if not len(change):
        return []
    if scenario.clock is None:  # one segment per round
        return [(float(i + 1), float(d[i])) for i in change]
    if profile is None:
        return []
    clock = np.asarray(scenario.clock, float)
    lengths = np.asarray(scenario.oracle_lengths, int)
    round_ms = np.asarray(profile.compute_ms, float)[lengths - 1] + 2.0 * d
    ends = np.append(clock[1:], scenario.horizon_ms)
    start_round = np.concatenate([[0.0], np.cumsum((ends - clock) / round_ms)])[:-1]
    return [(float(start_round[i] + 1), float(d[i])) for i in change]


def _mark_phases(ax, marks: list[tuple[float, float]], pace: str) -> None:
    few = len(marks) <= 6
    for i, (r, delay) in enumerate(marks):
        ax.axvline(r, color="dimgrey", ls="--" if few else ":", lw=1.0 if few else 0.6, zorder=0,
                   label=(f"delay changes ({pace})" if i == 0 else None))
        if few:
            ax.annotate(f"→ {delay:g} ms", (r, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                        textcoords="offset points", fontsize=7, color="dimgrey")


def plot_simulation(result: dict, out_dir: Path, scenarios: list | None = None, profile=None) -> list[str]:
    """One figure per scenario: cumulative regret per policy (left) and the gap to the oracle with its
    95 % interval over seeds (right), one colour per policy. `scenarios` (the simulator's, in the
    result's order) and `profile` locate the delay changes of drift and Markov scenarios."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = int(result.get("seeds", 1))
    written = []
    for n, sc in enumerate(result["scenarios"]):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.35, 1]})
        specs = list(sc["policies"])
        ys_all = []
        for spec in specs:
            curve = sc["policies"][spec]["regret_curve"]
            xs, ys = [p[0] for p in curve], [p[1] for p in curve]
            ys_all += ys
            ax1.plot(xs, ys, ms=4, markevery=0.08, label=spec, **policy_style(spec))
        symlog_regret(ax1, ys_all)
        marks = phase_marks(scenarios[n], profile) if scenarios is not None and n < len(scenarios) else []
        if marks:  # linear rounds, so phases keep their lengths and the slope after a change reads directly
            _mark_phases(ax1, marks, "at the oracle's pace" if scenarios[n].clock is not None else "round")
            ax1.set_xlabel("round")
        else:
            ax1.set_xscale("log")
            ax1.set_xlabel("round (log scale)")
        ax1.set_title(f"{result['profile']}: {sc['label']}\ncumulative regret, mean of {seeds} seed"
                      f"{'s' if seeds != 1 else ''} (no per-round interval)", fontsize=9)
        ax1.legend(fontsize=7)

        gaps = [sc["policies"][s]["gap_pct"] for s in specs]
        half = [t95(seeds - 1) * sc["policies"][s].get("gap_pct_stderr", 0.0) if seeds > 1 else 0.0
                for s in specs]
        pos = np.arange(len(specs))[::-1]  # first policy on top, as in the legend
        ax2.barh(pos, gaps, xerr=half, capsize=3, color=[policy_color(s) for s in specs],
                 error_kw={"ecolor": "black", "lw": 1})
        for y, g, h in zip(pos, gaps, half):
            ax2.annotate(f"{g:+.1f} %", (g + h if g >= 0 else g - h, y), xytext=(3 if g >= 0 else -3, 0),
                         textcoords="offset points", va="center", ha="left" if g >= 0 else "right", fontsize=7)
        ax2.set_yticks(pos, specs)
        ax2.axvline(0, color="black", lw=0.8)
        lo, hi = min(0.0, *(g - h for g, h in zip(gaps, half))), max(0.0, *(g + h for g, h in zip(gaps, half)))
        ax2.set_xlim(lo - 0.18 * (hi - lo + 1e-9), hi + 0.18 * (hi - lo + 1e-9))
        ax2.set_xlabel(f"gap to the oracle's ms/token (%)\nmean and 95 % interval over {seeds} seeds", fontsize=9)
        ax2.set_title(f"oracle {sc['oracle']['ms_per_token']:.1f} ms/token", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{_slug(result['profile'])}-{_slug(sc['label'])}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(str(path))
    return written


def _delay_label(g: dict) -> str:
    state = g.get("channel_state")
    d = g.get("mean_delay_ms")
    return f"{d:g} ms" + (f"\nstate {state}" if state not in (None, "-") else "")


def plot_run(run_dir: str | Path, out_dir: str | Path, analysis: dict | None = None) -> list[str]:
    """A run at a glance (from `analyze`'s groups; computed here when `analysis` is not given):
    ms/token per delay with its 95 % interval, the policies' rounds beside the target-only baseline's
    (its own hatched grey bars, never mixed in), and for each speculative policy the lengths it chose
    at each delay, with the number of rounds on every bar."""
    if analysis is None:
        analysis = analyze_frames(load_run(run_dir).rounds)
    groups = analysis["groups"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({(g.get("mean_delay_ms") or 0.0, g.get("channel_state", "-")) for g in groups})
    labels = {}
    for g in groups:
        labels[(g.get("mean_delay_ms") or 0.0, g.get("channel_state", "-"))] = _delay_label(g)
    policies = sorted({g["policy"] for g in groups}, key=lambda p: (p == TARGET_ONLY, p))
    speculative = [p for p in policies if p != TARGET_ONLY]
    fig, axes = plt.subplots(1, 1 + max(len(speculative), 1), figsize=(6 + 5.5 * max(len(speculative), 1), 5.2),
                             squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(len(policies), 1)
    for i, p in enumerate(policies):
        base = p == TARGET_ONLY
        for j, key in enumerate(keys):
            g = next((g for g in groups if g["policy"] == p
                      and (g.get("mean_delay_ms") or 0.0, g.get("channel_state", "-")) == key), None)
            if g is None or g["ms_per_token"] is None:
                continue
            y, (lo, hi) = g["ms_per_token"], g["ms_per_token_ci"]
            err = [[y - lo if lo is not None else 0], [hi - y if hi is not None else 0]]
            x = j - 0.4 + width * (i + 0.5)
            ax.bar([x], [y], width, yerr=err, capsize=3, color=policy_color(p), hatch="//" if base else None,
                   edgecolor="white" if base else None,
                   label=(f"{p} (baseline: 1 token/round)" if base else p) if j == 0 else None)
            ax.annotate(f"n={g['rounds']}", (x, y + err[1][0]), xytext=(0, 4), textcoords="offset points",
                        ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(keys)), [labels[k] for k in keys], fontsize=8)
    ax.set(xlabel="one-way delay", ylabel="ms per generated token (95 % interval)",
           title="ms/token: policy vs target-only baseline\n(n = rounds)")
    ax.margins(y=0.15)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    for ax, p in zip(axes[0][1:], speculative or [None]):
        if p is None:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no speculative rounds\n(target-only only)", ha="center", va="center")
            continue
        _length_chart(ax, [g for g in groups if g["policy"] == p], p, int(analysis.get("max_length") or 1), labels)
    fig.tight_layout()
    path = out / "run-rounds.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [str(path)]


def _length_chart(ax, groups: list[dict], policy: str, max_length: int, labels: dict) -> None:
    """Rounds per draft length, one bar per delay (shades of the policy's colour), counts on the bars."""
    groups = sorted(groups, key=lambda g: (g.get("mean_delay_ms") or 0.0, g.get("channel_state", "-")))
    base = np.array(mcolors.to_rgb(policy_color(policy)))
    width = 0.8 / max(len(groups), 1)
    total = 0
    for i, g in enumerate(groups):
        counts = {int(k): int(v) for k, v in (g.get("lengths_chosen") or {}).items()}
        total += sum(counts.values())
        f = 0.55 * (1 - i / max(len(groups) - 1, 1))  # first delay lightest, last the policy's own colour
        color = mcolors.to_hex(base + (1 - base) * f)
        xs = [L - 0.4 + width * (i + 0.5) for L in range(1, max_length + 1)]
        ns = [counts.get(L, 0) for L in range(1, max_length + 1)]
        key = (g.get("mean_delay_ms") or 0.0, g.get("channel_state", "-"))
        bars = ax.bar(xs, ns, width, color=color, edgecolor="black", lw=0.3,
                      label=labels[key].replace("\n", ", ") + f" ({sum(ns)} rounds)")
        ax.bar_label(bars, [str(n) if n else "" for n in ns], fontsize=6, padding=1)
    ax.set_xticks(range(1, max_length + 1))
    ax.margins(y=0.12)
    ax.set(xlabel="draft length", ylabel="rounds (count)",
           title=f"lengths chosen by {policy}: {total} rounds\n(target-only baseline excluded)")
    ax.legend(fontsize=7, title="one-way delay", title_fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=2)
