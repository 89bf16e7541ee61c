"""`specstop experiment compare|drift|markov|regret`: policies side by side on the live pipeline.

Every policy runs the same prompts with the same seeds (paired) on the same
edge, so differences come from the policies, not the prompts. The empirical
oracle is the best fixed length under the profile calibrated at the start
(every length at zero delay, prompts of its own); its gap is measured, not
assumed. A policy's gap to the oracle carries a paired bootstrap interval
(requests resampled together for both).

  compare  every policy at several constant delays, and draft trees (tree:auto and fixed
           spines, pipeline/experiments/trees.py) against the best fixed tree and the best chain;
           with `stream`, the stream tree of each width (pipeline/experiments/stream.py) against
           the best fixed chain in hindsight, `auto` and the modelled cloud streaming (with
           `stream_fill`, once more on a cloud that fills its idle time, checked apart)
  drift    the delay jumps in wall-clock time (20 -> 150 ms): static tuning vs online
  markov   a two-state channel (20 / 150 ms, states held for seconds of wall-clock time,
           state visible): blind vs contextual
  regret   one long run at 100 ms, rounds in order: cumulative regret against the oracle
"""
from __future__ import annotations

import json
import time

import numpy as np
import polars as pl

from control.profile import profile_from_dict
from control.theory import best_length
from pipeline.transport import aio
from pipeline.analysis import calibrate_rounds, load_run
from pipeline.analysis.hindsight import PROBE, best_fixed, best_threshold
from pipeline.analysis.stats import delay_buckets, ratio_ci
from pipeline.experiments.lab import Cell, Lab, LabConfig, config_dict, elapsed, lab_prompts, logged, save
from pipeline.experiments.stream import missing_stream_cells, run_streams, stream_checks, stream_rows
from pipeline.experiments.trees import COMPARE_TREES, run_trees, tree_rows
from pipeline.experiments.refusals import (
    Refusal, emulation_overruns, failed_requests, too_few_rounds, transport_overhead,
)

ORACLE = "oracle"
CAL_EDGE = "edge-cal"


def compare_policies(head: bool) -> list[str]:
    """Every baseline the issue names; the head rules only when a trained head is shipped."""
    base = ["auto", "ucb-specstop", "ucb-specstop-scaled", "naive-ucb", "static:10", "hf-heuristic",
            "hf-confidence:0.4"]  # canonical specs: rows are matched on the logged policy
    return base + (["specdec++:0.7", "specdec++-delay"] if head else [])


def head_available() -> bool:
    try:
        from nodes.models.head import head_path
    except ImportError:
        return False
    return head_path().exists()


def paired_gap(policy: pl.DataFrame, oracle: pl.DataFrame, resamples: int = 400, seed: int = 0) -> dict:
    """Gap of policy vs oracle ms/token (%), requests paired by prompt index, with a bootstrap interval."""
    def per_prompt(df: pl.DataFrame) -> pl.DataFrame:
        return (df.with_columns(pl.col("request_id").str.extract(r"-(\d+)$").cast(pl.Int64).alias("k"))
                .group_by("k").agg(pl.col("round_ms").sum().alias("t"), pl.col("tokens").sum().alias("n")))

    joined = per_prompt(policy).join(per_prompt(oracle), on="k", suffix="_o")
    if joined.is_empty():
        return {"gap_pct": None, "ci": [None, None], "pairs": 0}
    t, n, to, no = (joined[c].to_numpy().astype(float) for c in ("t", "n", "t_o", "n_o"))
    gap = 100.0 * ((t.sum() / n.sum()) / (to.sum() / no.sum()) - 1.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(t), size=(resamples, len(t)))
    boots = 100.0 * ((t[idx].sum(1) / n[idx].sum(1)) / (to[idx].sum(1) / no[idx].sum(1)) - 1.0)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"gap_pct": round(float(gap), 2), "ci": [round(float(lo), 2), round(float(hi), 2)], "pairs": len(t)}


async def _calibrate_and_run(cfg: LabConfig, name: str, channels: dict[str, str], cells: list[Cell],
                             prompts: list[str], progress, duration_s: float | None = None
                             ) -> tuple[pl.DataFrame, dict, dict | None, list[Refusal]]:
    """Calibrate a profile (every length at zero delay, prompts of its own), then run `cells` with it:
    (the run's rounds, the calibration, the emulated devices, what the machine did that the numbers cannot
    carry)."""
    lengths = range(1, cfg.max_length + 1)
    n_cal = 6 if cfg.quick else 12
    cal_prompts = lab_prompts(n_cal, seed=cfg.seed + 101)
    with Lab(cfg, f"{name}-calibration", {CAL_EDGE: "const:0"}) as lab:
        await lab.run([Cell(CAL_EDGE, f"fixed:{L}", n_cal, tag=f"cal-{L}") for L in lengths], cal_prompts, progress)
        cal = calibrate_rounds(load_run(lab.run_dir).rounds, cfg.max_length, name=f"{name}-calibration")
    profile_path = cfg.out / f"{name}-profile.json"
    profile_path.write_text(json.dumps(cal, indent=1) + "\n")
    run_cfg = LabConfig(**{**cfg.__dict__, "profile": str(profile_path)})
    with Lab(run_cfg, name, channels) as lab:
        results = await lab.run(cells, prompts, progress, duration_s)
        emulation = lab.emulation()
        rounds = await logged(lab.run_dir, results)
    failed = failed_requests(sum(len(r.failed) for r in results), sum(len(r.streams) for r in results))
    machine = [x for x in (emulation_overruns(rounds, emulation), transport_overhead(rounds), failed) if x is not None]
    return rounds, cal, emulation, machine


def policy_rows(rounds: pl.DataFrame, policies: list[str], by: list[str], oracle_policy: str = ORACLE,
                references: bool = False, lengths=()) -> list[dict]:
    """One row per policy and group (ms/token with its interval, lengths played, the paired gap to the
    calibrated oracle). With `references`, each group also gets the run's own references (the best fixed
    length and, where probe rounds carry head scores, the best per-token threshold in hindsight: see
    pipeline/analysis/hindsight.py), a row each, and every row its paired gap to both."""
    keyed = rounds.with_columns(delay_buckets(rounds["delay_ms"].fill_null(0.0)))
    rows = []
    for key, g in keyed.group_by(by, maintain_order=True):
        key = {k: str(v) for k, v in zip(by, key)}
        oracle = g.filter(pl.col("policy") == oracle_policy)
        refs = _references(g, lengths) if references else {}
        for p in policies:
            sub = g.filter(pl.col("policy") == p)
            if sub.is_empty():
                continue
            j, lo, hi = ratio_ci(sub)
            row = {**key, "policy": p, "rounds": sub.height,
                   "ms_per_token": _r(j), "ci": [_r(lo), _r(hi)],
                   "mean_length": _r(sub["draft_length"].mean()),
                   "lengths": {str(L): n for L, n in sub["draft_length"].value_counts().sort("draft_length").iter_rows()}}
            if p != oracle_policy and not oracle.is_empty():
                row["vs_oracle"] = paired_gap(sub, oracle)
            for name, ref in refs.items():
                if p != ref["policy"]:  # a replay holds drafted rounds only (hindsight.best_threshold)
                    mine = sub.filter(pl.col("draft_length") > 0) if ref["policy"].startswith(HINDSIGHT) else sub
                    row[f"vs_{name}"] = paired_gap(mine, ref["frame"])
            if references and p != "auto" and not (auto := g.filter(pl.col("policy") == "auto")).is_empty():
                row["vs_auto"] = paired_gap(sub, auto)  # > 0: this policy is slower than auto
            rows.append(row)
        for name, ref in refs.items():
            if ref["policy"].startswith(HINDSIGHT):
                rows.append({**key, "policy": ref["policy"], "rounds": ref["rounds"],
                             "ms_per_token": _r(ref["ms_per_token"]), "ci": [None, None], "mean_length": None,
                             "lengths": {}, "reference": name})
            else:
                next(r for r in rows if r["policy"] == ref["policy"] and all(r[k] == v for k, v in key.items())
                     )["reference"] = name
    return rows


HINDSIGHT = "hindsight-threshold"


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

REFERENCES = ("best_threshold", "best_fixed")  # the run's own references; on a tie the threshold is named


def _references(g: pl.DataFrame, lengths) -> dict[str, dict]:
    """{"best_fixed": ..., "best_threshold": ...} at one delay: the policy (or the replayed rule) and the
    rounds a paired gap is taken against."""
    refs = {}
    policy, j = best_fixed(g, lengths)
    if policy is not None:
        refs["best_fixed"] = {"policy": policy, "ms_per_token": j, "frame": g.filter(pl.col("policy") == policy)}
    t = best_threshold(g, lengths)
    if t is not None:
        refs["best_threshold"] = {**t, "policy": f"{HINDSIGHT}:{t['threshold']:g}"}
    return refs


def _r(x):
    return None if x is None else round(float(x), 2)


async def _compare(cfg: LabConfig, progress=None) -> dict:
    t0 = time.perf_counter()
    delays = (10.0, 50.0, 100.0, 150.0) if cfg.quick else (5.0, 10.0, 20.0, 50.0, 100.0, 150.0)
    lengths = list(range(1, cfg.max_length + 1))
    head = head_available()
    rivals = compare_policies(head)
    # the references come from the run itself, on the same prompts and seeds: every fixed length (the
    # best in hindsight) and, with the head, the probe whose scores replay every threshold
    policies = rivals + [ORACLE] + [f"fixed:{L}" for L in lengths] + ([PROBE] if head else [])
    # a learner needs a few hundred rounds before its exploration is small next to a 1 % margin, and a
    # paired gap over n prompts has a standard error of ~8 % / sqrt(n) (sampled texts diverge per policy)
    n = 60 if cfg.quick else 120
    prompts = lab_prompts(n, seed=cfg.seed)
    channels = {f"edge-d{d:g}": f"const:{d:g}" for d in delays}
    cells = [Cell(edge, p, n) for edge in channels for p in policies]
    rounds, cal, emulation, refused = await _calibrate_and_run(cfg, "compare", channels, cells, prompts, progress)
    rows = policy_rows(rounds, policies, ["delay"], references=True, lengths=lengths)
    checks = compare_checks(rows, [p for p in rivals if p != "auto"])
    if not checks["reference"]:
        refused.append(Refusal("no_reference", "no fixed length and no threshold could be scored at some delay"))
    # trees: the same prompts and seeds on edges of their own (a shape is an edge's setting)
    shapes = COMPARE_TREES if cfg.trees is None else cfg.trees
    trees, tree_refused = (await run_trees(cfg, delays, shapes, prompts, n, progress) if shapes
                           else (pl.DataFrame(), []))
    refused += tree_refused
    trows = tree_rows(rounds, trees, [p for p in policies if p != PROBE])
    # the stream tree: the same prompts and seeds on edges of their own (an edge's setting, as a shape)
    frames = []
    for widths, fill in ((cfg.stream, False), (cfg.stream_fill, True)):  # with fill: a cloud of its own
        if widths:
            frame, stream_refused = await run_streams(cfg, delays, widths, prompts, n, progress, fill=fill)
            frames.append(frame)
            refused += stream_refused
    streams = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    srows = stream_rows(rounds, streams, lengths, emulation)
    refused += missing_stream_cells(srows, len(delays), cfg.stream, cfg.stream_fill)
    return {"experiment": "compare", "config": config_dict(cfg), "emulation": emulation, "calibration": cal,
            "delays": list(delays), "policies": policies, "rows": rows, "checks": checks,
            "trees": list(shapes), "tree_rows": trows, "stream": list(cfg.stream),
            "stream_fill": list(cfg.stream_fill), "stream_rows": srows,
            "stream_checks": stream_checks(srows),
            "refused": _with_counts(refused, rows + trows, needs=("auto",)), "wall_s": elapsed(t0)}


WITHIN_PCT = 1.0


def compare_checks(rows: list[dict], rivals: list[str]) -> dict:
    """Two-sided, with the reference named: at every delay `auto` is within 1 % of the strongest
    reference the run has there (the faster of the best per-token threshold in hindsight, where the head
    ran, and the best fixed length in hindsight: at a short delay one token a round can beat every
    threshold) on either side (far below it would mean the reference is not the strongest), and no rival
    is ahead of `auto` where their paired interval is clear (wins and losses both listed)."""
    by_delay: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_delay.setdefault(r["delay"], {})[r["policy"]] = r
    within = f"auto_within_{WITHIN_PCT:g}pct"
    checks = {"reference": None, within: True, "auto_ahead_where_clear": True, "detail": []}
    kinds = []
    for d, rs in sorted(by_delay.items(), key=lambda x: float(x[0]) if _numeric(x[0]) else float("inf")):
        auto = rs.get("auto")
        # the faster reference is the one auto's paired gap is larger to (each gap on like rounds: a replay
        # holds drafted rounds only, so the references' own ms/token are not comparable); where auto has no
        # gap to any, by their ms/token (the check fails then anyway)
        named = [(r["reference"], p, r["ms_per_token"]) for p, r in rs.items()
                 if r.get("reference") in REFERENCES and r.get("ms_per_token") is not None]
        gaps = [(-g, REFERENCES.index(k), k, p) for k, p, _ in named
                if (g := ((auto or {}).get(f"vs_{k}") or {}).get("gap_pct")) is not None]
        refs = gaps or [(j, REFERENCES.index(k), k, p) for k, p, j in named]
        _, _, kind, ref = min(refs) if refs else (None, None, None, None)
        kinds.append(kind)
        gap = (auto or {}).get(f"vs_{kind}", {}) if kind else {}
        if gap.get("gap_pct") is None or abs(gap["gap_pct"]) > WITHIN_PCT:
            checks[within] = False
        checks["detail"].append({"delay": d, "check": within, "reference": ref, "reference_kind": kind,
                                 "auto_gap_pct": gap.get("gap_pct"), "ci": gap.get("ci")})
        for rival in rivals:
            vs = rs.get(rival, {}).get("vs_auto")
            if auto is None or not vs or vs.get("gap_pct") is None:
                continue
            clear = vs["ci"][0] > 0 or vs["ci"][1] < 0
            if clear and vs["gap_pct"] < 0:
                checks["auto_ahead_where_clear"] = False
            checks["detail"].append({"delay": d, "rival": rival, "rival_vs_auto_pct": vs["gap_pct"], "ci": vs["ci"],
                                     "clear": bool(clear), "auto_ahead": vs["gap_pct"] > 0})
    if kinds and None not in kinds:
        checks["reference"] = kinds[0] if len(set(kinds)) == 1 else "/".join(k for k in REFERENCES if k in kinds)
    return checks


async def _drift(cfg: LabConfig, progress=None) -> dict:
    t0 = time.perf_counter()
    phase_s = 60.0 if cfg.quick else 180.0
    policies = ["auto", "static:20", "ucb-specstop", ORACLE]
    n = 24 if cfg.quick else 64
    prompts = lab_prompts(n, seed=cfg.seed)
    channels = {"edge-drift": f"drift:20,150:{phase_s:g}"}
    cells = [Cell("edge-drift", p, n) for p in policies]
    rounds, cal, emulation, refused = await _calibrate_and_run(cfg, "drift", channels, cells, prompts, progress,
                                                      duration_s=2 * phase_s)
    rows = policy_rows(rounds, policies, ["delay"])
    whole = policy_rows(rounds.with_columns(pl.lit(0.0).alias("delay_ms")), policies, ["delay"])
    static_gap = next((r["vs_oracle"]["gap_pct"] for r in rows if r["policy"] == "static:20" and r["delay"] == "150.0"), None)
    auto_gap = next((r["vs_oracle"]["gap_pct"] for r in rows if r["policy"] == "auto" and r["delay"] == "150.0"), None)
    return {"experiment": "drift", "config": config_dict(cfg), "emulation": emulation, "calibration": cal,
            "channel": channels["edge-drift"], "rows": rows, "whole_run": whole,
            "checks": {"static_gap_after_the_change_pct": static_gap, "auto_gap_after_the_change_pct": auto_gap,
                       "gap_removed": auto_gap is not None and static_gap is not None and auto_gap < static_gap / 3},
            "refused": _with_counts(refused, rows, needs=("auto", "static:20")), "wall_s": elapsed(t0)}


async def _markov(cfg: LabConfig, progress=None) -> dict:
    t0 = time.perf_counter()
    policies = ["auto", "auto-blind", "ucb-specstop", "ucb-specstop-ctx", ORACLE]
    n = 24 if cfg.quick else 64
    prompts = lab_prompts(n, seed=cfg.seed)
    # states change in wall-clock time, as a real link's do: the per-state best length is then right
    channels = {"edge-markov": f"markov-clock:20,150:{5 if cfg.quick else 10}"}
    cells = [Cell("edge-markov", p, n) for p in policies]
    rounds, cal, emulation, refused = await _calibrate_and_run(cfg, "markov", channels, cells, prompts, progress)
    whole = policy_rows(rounds.with_columns(pl.lit(0.0).alias("delay_ms")), policies, ["delay"])
    per_state = policy_rows(rounds, policies, ["delay"])
    return {"experiment": "markov", "config": config_dict(cfg), "emulation": emulation, "calibration": cal,
            "channel": channels["edge-markov"], "rows": whole, "per_state": per_state,
            "refused": _with_counts(refused, per_state, needs=("auto",)), "wall_s": elapsed(t0)}


async def _regret(cfg: LabConfig, progress=None) -> dict:
    """Rounds in order per policy (one request at a time per policy), cumulative regret vs the oracle."""
    t0 = time.perf_counter()
    policies = ["auto", "ucb-specstop", "ucb-specstop-scaled", "naive-ucb", ORACLE]
    n = 16 if cfg.quick else 48
    prompts = lab_prompts(n, seed=cfg.seed)
    channels = {"edge-regret": "const:100"}
    cells = [Cell("edge-regret", p, n) for p in policies]
    sequential = LabConfig(**{**cfg.__dict__, "concurrency": len(policies)})  # one stream per policy
    rounds, cal, emulation, refused = await _calibrate_and_run(sequential, "regret", channels, cells, prompts, progress)
    profile = profile_from_dict(cal, "regret calibration")
    lam = best_length(profile, 100.0)[1]
    curves = {}
    for p in policies:
        g = rounds.filter(pl.col("policy") == p).sort("ts")
        regret = np.cumsum(g["round_ms"].to_numpy() - lam * g["tokens"].to_numpy())
        marks = np.unique(np.geomspace(1, max(len(regret), 1), 25).astype(int)) - 1
        curves[p] = [[int(m) + 1, round(float(regret[m]), 1)] for m in marks if len(regret)]
    rows = policy_rows(rounds, policies, ["delay"])
    return {"experiment": "regret", "config": config_dict(cfg), "emulation": emulation, "calibration": cal,
            "oracle_ms_per_token_theory": round(lam, 2), "rows": rows, "cumulative_regret_ms": curves,
            "refused": _with_counts(refused, rows, needs=("auto",)), "wall_s": elapsed(t0)}


def _with_counts(refused: list[Refusal], rows: list[dict], needs: tuple[str, ...]) -> list[dict]:
    """The machine's refusals plus thin cells, and a policy the experiment is about that has no rows."""
    out = list(refused)
    thin = too_few_rounds({f"{r['policy']} at {r['delay']} ms": r["rounds"] for r in rows})
    if thin is not None:
        out.append(thin)
    missing = [p for p in needs if not any(r["policy"] == p for r in rows)]
    if missing:
        out.append(Refusal("too_few_rounds", f"no rounds of {', '.join(missing)}"))
    return [r.to_dict() for r in out]


EXPERIMENTS = {"compare": _compare, "drift": _drift, "markov": _markov, "regret": _regret}


def run_experiment(name: str, cfg: LabConfig, progress=None) -> dict:
    result = aio.run(EXPERIMENTS[name](cfg, progress))
    save(cfg, name, result)
    return result
