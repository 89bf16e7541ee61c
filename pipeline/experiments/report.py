"""`specstop report DIR`: one Markdown page from the experiments' JSON results in DIR.

Tables for every experiment found (phase, compare, drift, markov, regret),
plots beside them (PNG), and a line per result saying whether device
emulation was on and with which profiles.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.analysis.plots import policy_color, policy_style, symlog_regret  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402

ORDER = ("phase", "compare", "drift", "markov", "regret")


def _emulation_line(res: dict) -> str:
    emu = res.get("emulation")
    if not emu:
        return "_Device emulation: off (this machine as is)._"
    parts = [f"{role}: `{d['name']}`" for role, d in emu.items() if d]
    return "_Device emulation ON — compute times are the emulated devices' (" + ", ".join(parts) + ")._"


def _phase_detail(dc: dict) -> str:
    """Intervals and the independent-rounds prediction, where the run recorded them."""
    parts = []
    if dc.get("measured_ci"):
        parts.append(f"95 % intervals over prompts: measured {dc['measured_ci']}, predicted {dc['predicted_ci']}, "
                     f"their ratio {dc['ratio_ci']}")
    if "predicted_independent_rounds" in dc:
        parts.append("C and B of each fixed:L policy as calibrated; from the survival, which assumes independent "
                     f"rounds: {dc['predicted_independent_rounds']} ms")
    return "".join("; " + p for p in parts)


def _phase(res: dict, out: Path) -> list[str]:
    lengths = sorted({int(L) for r in res["rows"] for L in r["measured_ms_per_token"]})
    warned = [f"Calibration warning: {w}" for w in res.get("calibration", {}).get("warnings", [])]
    lines = ["## Phase: best draft length vs delay (fixed lengths, live)", "", _emulation_line(res), "",
             *warned, *([""] if warned else []),
             f"Critical delay: measured **{res['critical_delay_ms']['measured']} ms**, predicted from the calibrated "
             f"profile **{res['critical_delay_ms']['predicted']} ms** (within 20 %: "
             f"{'yes' if res['critical_delay_ms']['within_20pct'] else 'no'}" + _phase_detail(res['critical_delay_ms'])
             + f"). Best length as predicted wherever the "
             f"measured difference exceeds the interval: {'yes' if res['best_length_agrees_everywhere'] else 'no'}.", "",
             "| delay ms | measured best | within the interval | predicted best | " +
             " | ".join(f"L={L} ms/token" for L in lengths) + " |",
             "|---|---|---|---|" + "---|" * len(lengths)]
    for r in res["rows"]:
        cells = [f"{r['measured_ms_per_token'].get(str(L))}" for L in lengths]
        lines.append(f"| {r['delay_ms']:g} | {r['measured_best']} | {r['indistinguishable']} | {r['predicted_best']} | "
                     + " | ".join(cells) + " |")
    fig, ax = plt.subplots(figsize=(8, 5))
    delays = [r["delay_ms"] for r in res["rows"]]
    for L in lengths:
        ys = [r["measured_ms_per_token"].get(str(L)) for r in res["rows"]]
        lo = [r["ci"][str(L)][0] for r in res["rows"]]
        hi = [r["ci"][str(L)][1] for r in res["rows"]]
        err = [[y - a if None not in (y, a) else 0 for y, a in zip(ys, lo)],
               [b - y if None not in (y, b) else 0 for y, b in zip(ys, hi)]]
        ax.errorbar(delays, ys, yerr=err, ms=5, mfc="white", mew=1.2, capsize=2, elinewidth=0.8, lw=1.3,
                    label=f"L={L}", **policy_style(f"fixed:{L}"))
    _critical_delay_marks(ax, res["critical_delay_ms"])
    ax.set(xlabel="one-way delay (ms)", ylabel="ms per token (95 % interval)", title="fixed draft lengths, live")
    ax.legend(fontsize=7, ncol=2, loc="lower right", handlelength=3.2)  # the d_c labels sit top and bottom left
    fig.tight_layout()
    fig.savefig(out / "phase.png", dpi=90)
    plt.close(fig)
    return lines + ["", "![phase](phase.png)", ""]


# The two critical-delay marks: each its own line style, marker, end of the axes (predicted at the top,
# measured at the bottom) and label side, so they stay apart however close the two delays are.
DC_PREDICTED = {"color": "#D55E00", "ls": "--", "marker": "v", "y": 0.985, "va": "top", "ha": "left", "dx": 4}
DC_MEASURED = {"color": "black", "ls": "-", "marker": "^", "y": 0.015, "va": "bottom", "ha": "left", "dx": 4}


def _critical_delay_marks(ax, dc: dict) -> None:
    """Predicted and measured critical delay: a vertical line each (dashed vermillion / solid black), a
    triangle and a label at opposite ends of the axes, and the 95 % interval as a band at the same end."""
    for what, st, ci_key in (("predicted", DC_PREDICTED, "predicted_ci"), ("measured", DC_MEASURED, "measured_ci")):
        x = dc.get(what)
        if x is None:
            continue
        ax.axvline(x, color=st["color"], ls=st["ls"], lw=1.3, zorder=1.5, label=f"{what} d_c {x:g} ms")
        ax.plot([x], [st["y"]], marker=st["marker"], color=st["color"], ms=8, ls="none",
                transform=ax.get_xaxis_transform(), clip_on=False, zorder=3)
        ci = dc.get(ci_key)
        if ci and None not in ci:
            y0 = 0.5 if st["y"] > 0.5 else 0.0
            ax.axvspan(ci[0], ci[1], ymin=y0, ymax=y0 + 0.5, color=st["color"], alpha=0.1, lw=0, zorder=0)
        ax.annotate(f"{what} d_c = {x:g} ms", (x, st["y"]), xycoords=("data", "axes fraction"),
                    xytext=(st["dx"] + 6, 0), textcoords="offset points", ha=st["ha"], va=st["va"], fontsize=7,
                    color=st["color"], bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})


def _gap(v: dict | None) -> str:
    if not v or v.get("gap_pct") is None:
        return "—"
    return f"{v['gap_pct']:+.2f} % [{v['ci'][0]:+.2f}, {v['ci'][1]:+.2f}]"


def _policy_table(rows: list[dict], title: str, res: dict, key: str = "delay") -> list[str]:
    """One row per policy; the gap columns are the run's references (compare: the best fixed length and
    the best per-token threshold in hindsight, same prompts) where it has them, else the calibrated oracle."""
    refs = [n for n in ("best_threshold", "best_fixed") if any(f"vs_{n}" in r for r in rows)]
    cols = [(f"vs_{n}", {"best_threshold": "gap to best threshold (hindsight)",
                         "best_fixed": "gap to best fixed L (hindsight)"}[n]) for n in refs] or \
        [("vs_oracle", "gap to oracle")]
    lines = [title, "", _emulation_line(res), "",
             f"| {key} | policy | rounds | ms/token | 95 % interval | " + " | ".join(c[1] for c in cols) + " | mean L |",
             "|---|---|---|---|---|" + "---|" * len(cols) + "---|"]
    for r in rows:
        name = r["policy"] + (f" (**{r['reference'].replace('_', ' ')}**)" if r.get("reference") else "")
        lines.append(f"| {r.get(key, '')} | {name} | {r['rounds']} | {r['ms_per_token']} | {r['ci']} | "
                     + " | ".join(_gap(r.get(c)) for c, _ in cols) + f" | {r['mean_length']} |")
    return lines + [""]


def _tree_table(rows: list[dict]) -> list[str]:
    """Compare's draft trees: each shape against the run's best chain, tree:auto against the best
    fixed tree in hindsight (pipeline/experiments/trees.py)."""
    if not rows:
        return []
    lines = ["### Draft trees (same prompts and seeds, an edge per shape)", "",
             "| delay | shape | rounds | ms/token | 95 % interval | mean nodes | mean depth | best chain | "
             "best chain / this | gap to best fixed tree (hindsight) | gap to best chain |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["policy"] + (" (**best fixed tree**)" if r.get("reference") == "best_fixed_tree" else "")
        lines.append(f"| {r['delay']} | {name} | {r['rounds']} | {r['ms_per_token']} | {r['ci']} | {r['mean_nodes']} | "
                     f"{r['mean_depth']} | {r['best_chain']} ({r['best_chain_ms_per_token']}) | "
                     f"{r['best_chain_over_this']} | {_gap(r.get('vs_best_fixed_tree'))} | "
                     f"{_gap(r.get('vs_best_chain'))} |")
    return lines + [""]


def _stream_table(rows: list[dict], checks: list[dict]) -> list[str]:
    """Compare's stream tree: each width against the best fixed chain in hindsight, auto and the
    modelled cloud streaming (pipeline/experiments/stream.py), then the goal per delay."""
    if not rows:
        return []
    lines = ["### Stream tree (same prompts, seeds and devices, an edge per width)", "",
             "| delay | width | verdicts | ms/token | 95 % interval | misses/token | best fixed chain | "
             "best fixed chain / this | auto / this | this / cloud streaming (modelled) | gap to best fixed chain |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['delay']} | {r['policy']} | {r['verdicts']} | {r['ms_per_token']} | {r['ci']} | "
                     f"{r['misses_per_token']} | {r['best_fixed_chain']} ({r['best_fixed_chain_ms_per_token']}) | "
                     f"{r['best_fixed_chain_over_this']} | {r['auto_over_this']} | {r['this_vs_cloud_streaming']} | "
                     f"{_gap(r.get('vs_best_fixed_chain'))} |")
    lines.append("")
    lines += [f"- {r['delay']} ms, {r['policy']} (width learned per request) ran widths "
              + (", ".join(f"{w} ({n} request{'s' if n != 1 else ''})" for w, n in r["widths"].items()) or "none recorded")
              + (f"; best fixed width in hindsight {r['best_fixed_width']} ({r['best_fixed_width_ms_per_token']} "
                 f"ms/token), gap {_gap(r.get('vs_best_fixed_width'))}" if r.get("best_fixed_width") else "")
              for r in rows if "widths" in r]
    lines += [f"- {r['delay']} ms, {r['policy']} (the cloud filling its idle time, not speculation): "
              f"{r['filled_per_token']} tokens filled by the cloud and {r['target_forwards_per_token']} target "
              "forwards per token" for r in rows if r.get("fill")]
    lines += [f"- {c['delay']} ms, {c['stream']} vs {c['reference'].replace('_', ' ')} ({c['reference_policy']}): "
              f"{c['ratio']}x, goal {c['goal']:g}x: {'met' if c['met'] else 'missed'}"
              + (" (with fill)" if c.get("fill") else "") for c in checks]
    return lines + [""]


def _compare_checks(c: dict) -> list[str]:
    within = next((k for k in c if k.startswith("auto_within_")), None)
    lines = [f"Reference: **{(c.get('reference') or 'none').replace('_', ' ')} in hindsight** (same prompts and "
             f"seeds). {within}: {'yes' if within and c[within] else 'no'}; no rival ahead of auto where the paired "
             f"interval is clear: {'yes' if c.get('auto_ahead_where_clear') else 'no'}.", ""]
    for d in c.get("detail", []):
        if "check" in d:
            gap = "no gap" if d.get("auto_gap_pct") is None else f"{d['auto_gap_pct']:+.2f} % {d.get('ci')}"
            lines.append(f"- {d['delay']} ms: auto {gap} vs {d.get('reference') or 'no reference'}")
    losses = [d for d in c.get("detail", []) if "rival_vs_auto_pct" in d and d["clear"] and not d["auto_ahead"]]
    if losses:
        lines.append("Clearly ahead of auto: " + ", ".join(f"{d['rival']} at {d['delay']} ms "
                                                            f"({d['rival_vs_auto_pct']:+.2f} %)" for d in losses) + ".")
    return lines


def _bars(rows: list[dict], out: Path, name: str, group: str = "delay", phases: bool = False) -> str:
    """Gap to the oracle per policy (its colour everywhere) and delay, 95 % interval; `phases`: the delays
    are the phases of one run, in the order they came, with the changes between them marked."""
    delays = list(dict.fromkeys(r["delay"] for r in rows)) if phases else sorted({r["delay"] for r in rows}, key=float)
    policies = sorted({r["policy"] for r in rows if "vs_oracle" in r})
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(policies), 1)
    for i, p in enumerate(policies):
        xs, ys, errs = [], [], [[], []]
        for j, d in enumerate(delays):
            r = next((r for r in rows if r["policy"] == p and r["delay"] == d and "vs_oracle" in r), None)
            if r is None or r["vs_oracle"]["gap_pct"] is None:
                continue
            g = r["vs_oracle"]
            xs.append(j + i * width)
            ys.append(g["gap_pct"])
            errs[0].append(g["gap_pct"] - g["ci"][0])
            errs[1].append(g["ci"][1] - g["gap_pct"])
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=p, color=policy_color(p))
    ax.axhline(0, color="black", lw=0.8)
    ticks = [f"{group} {j + 1}: {float(d):g} ms" if phases else f"{float(d):g} ms" for j, d in enumerate(delays)]
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(delays))], ticks)
    for j in range(1, len(delays)) if phases else ():
        ax.axvline(j - width / 2 - 0.1, color="dimgrey", ls="--", lw=1,
                   label=f"delay changes ({float(delays[j - 1]):g} → {float(delays[j]):g} ms)")
    ax.set(ylabel="gap to the empirical oracle (%, 95 % interval)", title=f"{name}: policies vs the oracle",
           xlabel={"delay": "one-way delay", "phase": "phase of the run, in order (one-way delay)",
                   "state": "channel state (one-way delay)"}.get(group, group))
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=90)
    plt.close(fig)
    return f"![{name}]({name}.png)"


def _regret(res: dict, out: Path) -> list[str]:
    lines = _policy_table(res["rows"], "## Regret: one long run at 100 ms", res)
    fig, ax = plt.subplots(figsize=(7, 4))
    curves = {p: c for p, c in res["cumulative_regret_ms"].items() if c}
    for p, curve in curves.items():
        ax.plot([c[0] for c in curve], [c[1] for c in curve], ms=4, markevery=0.08, label=p,
                **policy_style(p))
    symlog_regret(ax, [c[1] for curve in curves.values() for c in curve],
                  "cumulative regret (ms, vs the oracle's ms/token)")
    ax.set(xscale="log", xlabel="round (log scale)",
           title="cumulative regret at 100 ms (one run: no interval)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "regret.png", dpi=90)
    plt.close(fig)
    return lines + ["![regret](regret.png)", ""]


def report(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    found = {name: json.loads((out / f"{name}.json").read_text()) for name in ORDER if (out / f"{name}.json").exists()}
    if not found:
        raise PipelineError(f"no experiment results (phase.json, compare.json, ...) in {out_dir}")
    lines = ["# specstop experiments", ""]
    for name, res in found.items():
        if res.get("refused"):
            lines += [f"## {name}: REFUSED", "",
                      *(f"- **{r['check']}**: {r['why']}" for r in res["refused"]), "",
                      "_The numbers below were measured in that run and are shown for diagnosis only; they are not "
                      "a result._", ""]
        if name == "phase":
            lines += _phase(res, out)
        elif name == "compare":
            lines += _policy_table(res["rows"], "## Compare: every policy at constant delays", res)
            lines += [*_compare_checks(res["checks"]), "", _bars(res["rows"], out, "compare"), ""]
            lines += _tree_table(res.get("tree_rows") or [])
            lines += _stream_table(res.get("stream_rows") or [], res.get("stream_checks") or [])
        elif name == "drift":
            lines += _policy_table(res["rows"], f"## Drift: `{res['channel']}` (per phase)", res)
            c = res["checks"]
            lines += [f"After the change: static tuning {c['static_gap_after_the_change_pct']} %, auto "
                      f"{c['auto_gap_after_the_change_pct']} % from the oracle (gap removed: "
                      f"{'yes' if c['gap_removed'] else 'no'}).", "",
                      _bars(res["rows"], out, "drift", group="phase", phases=True), ""]
        elif name == "markov":
            lines += _policy_table(res["rows"], f"## Markov channel: `{res['channel']}` (whole run)", res)
            lines += _policy_table(res["per_state"], "### Per state", res)
            lines += [_bars(res["per_state"], out, "markov", group="state"), ""]
        elif name == "regret":
            lines += _regret(res, out)
        lines.append(f"_{name}: {res.get('wall_s')} s; logs in `{res.get('run_dir', out)}`._")
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
