"""Plots a person understands: one colour per policy in every figure, intervals drawn, cumulative regret on a
scale that keeps zero and negative values, delay changes marked, the target-only baseline kept apart, counts
on the length chart. Checked on the figures' artists, not on pixels."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.colors as mcolors
import pytest
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from control.profile import load_profile
from control.simulator import build_scenarios, simulate
from pipeline.analysis import analyze_frames, load_run
from pipeline.analysis.plots import (
    REGRET_LABEL, grey_level, phase_marks, plot_run, plot_simulation, policy_color, policy_style,
)
from pipeline.experiments.report import report
from tests.conftest import run_cli
from tests.test_analysis import rnd, write_log

PROFILE = Path("nodes/models/bundled/profile.json")
RESULTS = Path("docs/results-quick")
DELAYS = [20.0, 55.0, 111.0, 150.0]


@pytest.fixture
def saved(monkeypatch):
    """Every figure saved during a test, by file name (the figure keeps its artists after plt.close)."""
    figs: dict[str, Figure] = {}
    original = Figure.savefig

    def spy(self, fname, *a, **kw):
        figs[Path(fname).name] = self
        return original(self, fname, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", spy)
    return figs


def hexes(colors) -> list[str]:
    return [mcolors.to_hex(c) for c in colors]


@pytest.fixture(scope="module")
def sim():
    prof = load_profile(PROFILE)
    scenarios = {k: build_scenarios(prof, k, DELAYS, 120) for k in ("const", "drift", "drift-rounds")}
    res = {k: simulate(prof, ["auto", "ucb-specstop", "naive-ucb"], sc, seeds=3) for k, sc in scenarios.items()}
    return prof, scenarios, res


def regret_axes(fig: Figure):
    return fig.axes[0], fig.axes[1]


def test_the_palette_is_one_stable_colour_per_policy():
    families = ["auto", "auto-blind", "oracle", "target-only", "ucb-specstop", "ucb-specstop-scaled",
                "ucb-specstop-ctx", "naive-ucb", "naive-ucb-scaled", "hf-heuristic", "hf-confidence", "specdec++",
                "specdec++-delay", "static"]
    colours = [policy_color(p) for p in families]
    assert len(set(colours)) == len(colours)
    assert policy_color(" auto ") == policy_color("auto") == "#0072b2"  # Okabe-Ito blue
    fixed = [policy_color(f"fixed:{k}") for k in range(1, 9)]
    assert len(set(fixed)) == 8
    assert policy_color("naive-ucb:2") not in (policy_color("naive-ucb"), policy_color("auto"))
    assert policy_color("some-new-policy") == policy_color("some-new-policy")  # crc32, not the salted hash()


def test_simulation_figures_colour_each_policy_alike_in_both_panels_and_draw_intervals(sim, saved, tmp_path):
    prof, scenarios, res = sim
    written = plot_simulation(res["const"], tmp_path, scenarios["const"], prof)
    assert len(written) == len(DELAYS) and all(Path(p).stat().st_size > 0 for p in written)
    for name in (Path(p).name for p in written):
        left, right = regret_axes(saved[name])
        lines = {ln.get_label(): mcolors.to_hex(ln.get_color()) for ln in left.get_lines()
                 if not ln.get_label().startswith("_")}
        assert lines == {p: policy_color(p) for p in ("auto", "ucb-specstop", "naive-ucb")}
        bars = next(c for c in right.containers if isinstance(c, BarContainer))
        names = [t.get_text() for t in right.get_yticklabels()]
        by_pos = sorted(zip(right.get_yticks(), hexes(p.get_facecolor() for p in bars.patches)))
        ticks = dict(zip(right.get_yticks(), names))
        assert {ticks[y]: c for y, c in by_pos} == lines
        # 95 % intervals over the seeds: error bars whose half-widths are t(2) * the reported standard error
        assert bars.errorbar is not None
        segs = bars.errorbar.lines[2][0].get_segments()
        half = sorted(round((s[1][0] - s[0][0]) / 2, 6) for s in segs)
        sc = next(s for s in res["const"]["scenarios"] if Path(name).stem.endswith(s["label"].replace(" ", "-")))
        want = sorted(round(4.303 * v["gap_pct_stderr"], 6) for v in sc["policies"].values())
        assert half == pytest.approx(want, rel=1e-4) and max(half) > 0
        assert "95 %" in right.get_xlabel()


def test_regret_is_labelled_cumulative_and_negative_values_are_drawn_unclipped(sim, saved, tmp_path):
    prof, scenarios, res = sim
    [path] = plot_simulation(res["drift-rounds"], tmp_path, scenarios["drift-rounds"], prof)
    left, _ = regret_axes(saved[Path(path).name])
    assert left.get_yscale() == "symlog" and REGRET_LABEL in left.get_ylabel()
    assert "cumulative" in left.get_ylabel()
    sc = res["drift-rounds"]["scenarios"][0]
    for ln in left.get_lines():
        if ln.get_label() in sc["policies"]:
            assert list(ln.get_ydata()) == [p[1] for p in sc["policies"][ln.get_label()]["regret_curve"]]
    assert min(y for ln in left.get_lines() if ln.get_label() in sc["policies"] for y in ln.get_ydata()) < 0
    zero = [ln for ln in left.get_lines() if list(ln.get_ydata()) == [0, 0]]
    assert zero, "a line at zero regret"


def test_drift_figures_mark_every_change_of_delay(sim, saved, tmp_path):
    prof, scenarios, res = sim
    # per-round drift: 120 rounds in four phases change at rounds 31, 61, 91
    assert phase_marks(scenarios["drift-rounds"][0], prof) == [(31.0, 55.0), (61.0, 111.0), (91.0, 150.0)]
    # wall-clock drift: the oracle's rounds per phase add up to about the rounds the oracle played
    marks = phase_marks(scenarios["drift"][0], prof)
    assert [d for _, d in marks] == DELAYS[1:]
    rounds = res["drift"]["scenarios"][0]["rounds"]
    assert 1 < marks[0][0] < marks[1][0] < marks[2][0] < rounds
    [path] = plot_simulation(res["drift"], tmp_path, scenarios["drift"], prof)
    left, _ = regret_axes(saved[Path(path).name])
    vlines = [ln for ln in left.get_lines() if list(ln.get_xdata()) == [ln.get_xdata()[0]] * 2
              and list(ln.get_ydata()) == [0, 1]]
    assert sorted(ln.get_xdata()[0] for ln in vlines) == pytest.approx([r for r, _ in marks])
    assert any("delay changes" in t.get_text() for t in left.get_legend().get_texts())
    assert [t.get_text() for t in left.texts] == ["→ 55 ms", "→ 111 ms", "→ 150 ms"]
    assert left.get_xscale() == "linear"
    # const scenarios have nothing to mark
    [p] = plot_simulation({**res["const"], "scenarios": res["const"]["scenarios"][:1]}, tmp_path,
                          scenarios["const"][:1], prof)
    assert not regret_axes(saved[Path(p).name])[0].texts


def test_the_run_plot_keeps_target_only_apart_and_counts_the_lengths(tmp_path, saved):
    # auto: lengths 2, 2, 3 at 10 ms and 4, 4, 4 at 40 ms; the target-only baseline: 15 rounds at 10 ms
    rows = [rnd(f"a{i}", 0, L, 1, 30.0, delay=10.0, policy="auto") for i, L in enumerate((2, 2, 3))]
    rows += [rnd(f"b{i}", 0, 4, 3, 60.0, delay=40.0, policy="auto") for i in range(3)]
    rows += [rnd(f"t{i}", r, 0, 0, 25.0, delay=10.0, policy="target-only", tokens=1) for i in range(3)
             for r in range(5)]
    write_log(tmp_path / "edge-1.jsonl", rows)
    out = tmp_path / "plots"
    [path] = plot_run(tmp_path, out)
    assert Path(path).stat().st_size > 0
    fig = saved["run-rounds.png"]
    ms_ax, len_ax = fig.axes
    analysis = analyze_frames(load_run(tmp_path).rounds)
    # ms/token: the policy's bars in its colour, the baseline's hatched in grey, each with its interval
    bars = [c for c in ms_ax.containers if isinstance(c, BarContainer)]
    colours = {hexes([b.patches[0].get_facecolor()])[0]: b for b in bars}
    assert policy_color("auto") in colours and policy_color("target-only") in colours
    assert all(p.get_hatch() == "//" for b in bars for p in b.patches
               if mcolors.to_hex(p.get_facecolor()) == policy_color("target-only"))
    heights = {(mcolors.to_hex(b.patches[0].get_facecolor()), round(b.patches[0].get_height(), 3)) for b in bars}
    assert heights == {(policy_color(g["policy"]), g["ms_per_token"]) for g in analysis["groups"]}
    assert all(b.errorbar is not None for b in bars)
    assert {t.get_text() for t in ms_ax.texts} == {f"n={g['rounds']}" for g in analysis["groups"]}
    legend = [t.get_text() for t in ms_ax.get_legend().get_texts()]
    assert any("target-only" in t and "baseline" in t for t in legend)
    # lengths chosen: only the policy's rounds, every bar labelled with its count
    heights = [p.get_height() for c in len_ax.containers for p in c.patches]
    assert sum(heights) == 6
    labels = [t.get_text() for t in len_ax.texts if t.get_text()]
    assert sorted(labels) == ["1", "2", "3"]
    assert "6 rounds" in len_ax.get_title() and "target-only baseline excluded" in len_ax.get_title()
    assert len_ax.get_ylabel() == "rounds (count)"


def test_the_experiment_report_uses_the_same_palette(tmp_path, saved):
    for f in RESULTS.glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    report(tmp_path)
    compare = next(c for c in saved["compare.png"].axes[0].containers if isinstance(c, BarContainer))
    # every bar of a policy in the compare, drift and markov plots has its palette colour
    for name in ("compare.png", "drift.png", "markov.png"):
        ax = saved[name].axes[0]
        for c in ax.containers:
            if isinstance(c, BarContainer):
                assert {mcolors.to_hex(p.get_facecolor()) for p in c.patches} == {policy_color(c.get_label())}
                assert c.errorbar is not None
    assert compare.get_label() in json.loads((tmp_path / "compare.json").read_text())["policies"]
    drift = saved["drift.png"].axes[0]
    assert any("delay changes (20 → 150 ms)" == t.get_text() for t in drift.get_legend().get_texts())
    regret = saved["regret.png"].axes[0]
    assert regret.get_yscale() == "symlog" and "cumulative regret" in regret.get_ylabel()
    for ln in regret.get_lines():
        if not ln.get_label().startswith("_"):
            assert mcolors.to_hex(ln.get_color()) == policy_color(ln.get_label())
    phase = saved["phase.png"].axes[0]
    assert {mcolors.to_hex(c.lines[0].get_color()) for c in phase.containers} == {
        policy_color(f"fixed:{k}") for k in range(1, 9)}


def test_the_cli_writes_both_plots(tmp_path):
    r = run_cli("simulate", "--profile", str(PROFILE), "--rounds", "60", "--seeds", "2", "--scenario", "drift",
                "--policies", "auto", "--plots", str(tmp_path / "sim"), "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    [png] = json.loads(r.stdout)["plots"]
    assert Path(png).stat().st_size > 0 and "drift" in Path(png).name
    write_log(tmp_path / "edge-1.jsonl", [rnd("a", i, 2, 1, 10.0, policy="auto") for i in range(5)]
              + [rnd("t", i, 0, 0, 5.0, policy="target-only", tokens=1) for i in range(5)])
    r = run_cli("analyze", str(tmp_path), "--plots", str(tmp_path / "run"), timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"plot: {tmp_path / 'run' / 'run-rounds.png'}" in r.stdout
    assert (tmp_path / "run" / "run-rounds.png").stat().st_size > 0


def phase_figure(tmp_path, saved):
    shutil.copy(RESULTS / "phase.json", tmp_path / "phase.json")
    report(tmp_path)
    return saved["phase.png"].axes[0], json.loads((tmp_path / "phase.json").read_text())


def test_every_line_of_the_phase_plot_has_its_own_marker_and_line_style(tmp_path, saved):
    ax, res = phase_figure(tmp_path, saved)
    data = [c.lines[0] for c in ax.containers]  # one errorbar per draft length
    marks = [ln for ln in ax.get_lines() if ln.get_label().endswith(" ms") and "d_c" in ln.get_label()]
    assert len(data) == 8 and len(marks) == 2
    combos = [(ln.get_marker(), ln.get_linestyle()) for ln in data + marks]
    assert len(set(combos)) == len(combos), combos


def test_the_phase_plot_lines_keep_their_order_in_grey(tmp_path, saved):
    ax, _ = phase_figure(tmp_path, saved)
    greys = [grey_level(c.lines[0].get_color()) for c in ax.containers]
    assert all(b - a >= 0.04 for a, b in zip(greys, greys[1:])), greys  # L = 1 darkest ... L = 8 lightest


def test_measured_and_predicted_critical_delays_are_drawn_apart(tmp_path, saved):
    ax, res = phase_figure(tmp_path, saved)
    dc = res["critical_delay_ms"]
    assert abs(dc["measured"] - dc["predicted"]) < 2  # close: the case where the marks used to overlap
    lines = {ln.get_label().split()[0]: ln for ln in ax.get_lines() if "d_c" in ln.get_label()}
    assert lines["predicted"].get_linestyle() != lines["measured"].get_linestyle()
    assert mcolors.to_hex(lines["predicted"].get_color()) != mcolors.to_hex(lines["measured"].get_color())
    labels = {t.get_text().split()[0]: t for t in ax.texts if "d_c =" in t.get_text()}
    assert labels["predicted"].xy[1] > 0.9 and labels["measured"].xy[1] < 0.1  # opposite ends of the axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"predicted d_c {dc['predicted']:g} ms" in legend and f"measured d_c {dc['measured']:g} ms" in legend


def test_policy_styles_differ_in_marker_or_line_style_for_every_pair():
    fixed = [policy_style(f"fixed:{k}") for k in range(1, 33)]
    assert len({(s["marker"], s["linestyle"]) for s in fixed}) == 32
    families = ["auto", "auto-blind", "oracle", "target-only", "ucb-specstop", "ucb-specstop-scaled",
                "ucb-specstop-ctx", "naive-ucb", "naive-ucb-scaled", "hf-heuristic", "hf-confidence", "specdec++",
                "specdec++-delay", "static"]
    assert len({policy_style(p)["marker"] for p in families}) == len(families)
    assert policy_style("naive-ucb:2")["linestyle"] != policy_style("naive-ucb")["linestyle"]
    combos = {(s["marker"], s["linestyle"]) for s in fixed[:16]}
    assert not combos & {(policy_style(p)["marker"], policy_style(p)["linestyle"]) for p in families}
