"""Screen a change to `auto` against a saved `bench policies --quick --json` run, in minutes not 18.

`auto`'s runs do not depend on which other policies run (the seeds are paired), so re-running `auto`
alone on a kind's cells and swapping its rows into the saved run gives exactly what the full bench
would print for it, rivals included. Module constants of control.policies.auto can be overridden
(NAME=value) in each worker, so a constant or a switch is screened without editing the file; a dotted
name reaches another module of control (streaks.RESTART=false is control.streaks.RESTART).

    python -m pipeline.bench.auto_screen base.json --kinds short --set OPTIMISM_Z=1.5
    python -m pipeline.bench.auto_screen base.json --kinds streaky --seeds 20 --set OPTIMISM_Z=1.0
"""
from __future__ import annotations

import argparse
import importlib
import json
import time
from concurrent.futures import ProcessPoolExecutor

from control.evaluation import _behind, _summary, kind_profiles, kind_scenarios
from control.families import DELAYS
from control.simulator import simulate


_DEFAULTS: dict = {}  # a worker's constants as the module set them, before any override


def _apply(overrides: dict) -> None:
    """Set `overrides` on control.policies.auto (or, for a dotted name, the control module it names) in
    this process, every earlier override undone first: a pool's worker runs the changed and the unchanged
    `auto` in turn (--seeds)."""
    for (module, name), value in _DEFAULTS.items():
        setattr(module, name, value)
    for dotted, value in overrides.items():
        where, _, name = dotted.rpartition(".")
        path = f"control.{where}" if where else "control.policies.auto"
        try:
            module = importlib.import_module(path)
        except ImportError:
            raise SystemExit(f"--set: no module {path} for {dotted}") from None
        if not hasattr(module, name):
            raise SystemExit(f"--set: {path} has no {name}")
        _DEFAULTS.setdefault((module, name), getattr(module, name))
        setattr(module, name, value)


def _one(args) -> dict:
    kind, profile, rounds, seeds, labels, overrides, calibration = args
    _apply(overrides)
    scs = [sc for sc in kind_scenarios(kind, profile, DELAYS, rounds) if not labels or any(x in sc.label for x in labels)]
    res = simulate(profile, ["auto"], scs, seeds, calibration=calibration)
    rows = {}
    for sc in res["scenarios"]:
        v = sc["policies"]["auto"]
        rows[sc["label"]] = {"mean": v["gap_pct"], "p90": v["gap_pct_p90"], "worst": v["gap_pct_worst"],
                             "expected_mean": v["expected_gap_pct"], "expected_p90": v["expected_gap_pct_p90"],
                             "expected_worst": v["expected_gap_pct_worst"],
                             "seeds": v["gap_pct_seeds"], "expected_seeds": v["expected_gap_pct_seeds"]}
    return {"kind": kind, "profile": profile.name, "auto": rows}


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def screen(base: dict, kinds: list[str], overrides: dict, profiles: list[str], labels: list[str],
           workers: int = 2, seeds: int | None = None) -> dict:
    """`auto` with `overrides` on the base's cells. With `seeds` other than the base's (a worst-seed goal
    needs more than the quick bench's five: a lock-in one seed in 20 has is invisible there), the
    unchanged `auto` is rerun on them too and rivals are left out ("behind" is None)."""
    rounds = base["rounds"]
    tail = seeds is not None and seeds != base["seeds"]
    seeds = base["seeds"] if seeds is None else seeds
    calibration = int(base.get("calibration") or 0)  # a calibrated base is screened calibrated, as it ran
    jobs = [(k, p, rounds, seeds, labels, overrides, calibration) for k in kinds for p in kind_profiles(k, 1, 0)
            if not profiles or any(x in p.name for x in profiles)]
    with ProcessPoolExecutor(workers) as pool:
        new = list(pool.map(_one, jobs))
        old = list(pool.map(_one, [(*j[:5], {}, j[6]) for j in jobs])) if tail else []
    rerun = {(r["kind"], r["profile"]): r["auto"] for r in old}
    out = {"overrides": overrides, "seeds": seeds, "by_kind": {}, "changed": []}
    for kind in kinds:
        mine = {r["profile"]: r["auto"] for r in new if r["kind"] == kind}
        rows, base_rows = [], []
        for r in base["per_profile"]:
            if r["kind"] != kind or r["profile"] not in mine:
                continue
            ran = mine[r["profile"]]
            if tail:
                pol = {"auto": rerun[(kind, r["profile"])]}
            else:
                pol = {k: {lab: c for lab, c in v.items() if lab in ran} for k, v in r["policies"].items()}
            for lab, c in ran.items():
                out["changed"].append((kind, r["profile"], lab, pol["auto"][lab]["mean"], c["mean"],
                                       pol["auto"][lab]["worst"], c["worst"]))
            base_rows.append({**r, "policies": pol})
            rows.append({**r, "policies": {**pol, "auto": ran}})
        if not rows:
            continue
        both = {}
        for tag, rs in (("base", base_rows), ("new", rows)):
            cells = [(r["profile"], lab, c) for r in rs for lab, c in r["policies"]["auto"].items()]
            both[tag] = {**_summary(cells), "expected": _summary(cells, "expected_"), "cells": len(cells),
                         "behind": None if tail else _behind(rs, "auto", "mean"),
                         "expected_behind": None if tail else _behind(rs, "auto", "expected_mean"),
                         "clearly_behind": None if tail else _behind(rs, "auto", "mean", clear=True)}
        out["by_kind"][kind] = both
    return out


def _line(tag: str, s: dict) -> str:
    return (f"  {tag:<5} mean {s['mean_gap_pct']:6.3f}  worst cell {s['worst_mean_gap_pct']:5.2f}  worst seed "
            f"{s['worst_seed_pct']:5.2f}  >1% {s['cells_over_1pct_mean']:3d}  seed>3% {s['cells_over_3pct_worst_seed']:3d}"
            f"  behind {'-' if s['behind'] is None else s['behind']:>2}/{s['cells']}"
            f" (clearly {'-' if s['clearly_behind'] is None else s['clearly_behind']})  | exp mean {s['expected']['mean_gap_pct']:6.3f} exp worst seed "
            f"{s['expected']['worst_seed_pct']:5.2f}  ({s['worst_seed_cell']})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="a `specstop bench policies --quick --json` output")
    p.add_argument("--kinds", default="short", help="comma-separated kinds, or all")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a constant of auto (or, dotted, of a control module)")
    p.add_argument("--profiles", default="", help="comma-separated substrings: only profiles whose name has one")
    p.add_argument("--labels", default="", help="comma-separated substrings: only scenarios whose label has one")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, help="rerun both on this many seeds (the tail), rivals left out")
    p.add_argument("--out", help="also write the result JSON here")
    p.add_argument("--top", type=int, default=6, help="print this many most-changed cells")
    a = p.parse_args()
    if a.seeds is not None and not 1 <= a.seeds <= 1000:
        p.error(f"--seeds must be 1..1000, got {a.seeds}")
    bad = [s for s in a.set if "=" not in s]
    if bad:
        p.error(f"--set takes NAME=VALUE, got {bad[0]!r}")
    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in a.set)}
    try:
        with open(a.base) as f:
            base = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        p.error(f"base {a.base}: {e}")
    kinds = base["kinds"] if a.kinds == "all" else a.kinds.split(",")
    t0 = time.perf_counter()
    res = screen(base, kinds, overrides, [x for x in a.profiles.split(",") if x], [x for x in a.labels.split(",") if x],
                 a.workers, a.seeds)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"overrides {overrides}  ({res['wall_s']} s)")
    for kind, both in res["by_kind"].items():
        print(kind)
        print(_line("base", both["base"]))
        print(_line("new", both["new"]))
    moved = sorted(res["changed"], key=lambda c: -abs(c[4] - c[3]))[:a.top]
    for kind, prof, lab, m0, m1, w0, w1 in moved:
        print(f"    {kind:<10} {prof:<40} {lab:<28} mean {m0:5.2f} -> {m1:5.2f}  worst {w0:5.2f} -> {w1:5.2f}")
    if a.out:
        json.dump(res, open(a.out, "w"))


if __name__ == "__main__":
    main()
