"""Commands that need no broker: train the pair and the head, generate in-process, theory, simulate."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from control import TARGET_ONLY, load_profile, make_policy
from control.simulator import SCENARIOS, build_scenarios, simulate
from control.theory import theory_table
from control.types import ControlError
from nodes.config import MAX_LENGTH
from nodes.models.errors import ModelError
from nodes.models.loading import BUNDLED_PROFILE, load_pair, set_threads
from schemas.rounds import SamplingParams
from pipeline.cli import preflight
from pipeline.cli.args import (DEFAULT_DELAYS, stop_on_sigterm, delays, emit, model_args, non_negative_float, positive_float,
                               positive_int, progress, shape_calibration_args)

def cmd_train_pair(a: argparse.Namespace) -> None:
    from nodes.models.train_pair import BUNDLED_DIR, TrainConfig, train_pair

    cfg = TrainConfig(steps=a.steps, draft_steps=a.draft_steps, seed=a.seed, threads=a.threads)
    out = Path(a.out) if a.out else BUNDLED_DIR
    print(json.dumps(train_pair(out, cfg, log=lambda s: print(s, file=sys.stderr, flush=True))))


def cmd_train_head(a: argparse.Namespace) -> None:
    from nodes.models.head import train_head
    from nodes.models.train_pair import BUNDLED_DIR

    out = Path(a.out) if a.out else BUNDLED_DIR / "head"
    pair = _pair(a)
    metrics = train_head(pair, out, windows=a.windows, epochs=a.epochs, seed=a.seed,
                         log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps(metrics))


def _pair(a: argparse.Namespace, load_draft: bool = True):
    set_threads(a.threads)
    return load_pair(a.draft, a.target, device=a.device, dtype=a.dtype, load_draft=load_draft)


def cmd_generate(a: argparse.Namespace) -> None:
    from nodes.speculative import speculative_generate

    if not a.prompt:
        raise ModelError("prompt is empty")
    params = SamplingParams(temperature=a.temperature, top_p=a.top_p)
    bundled = not a.draft and not a.target and BUNDLED_PROFILE.exists()
    profile = load_profile(a.profile) if a.profile else load_profile(BUNDLED_PROFILE) if bundled else None
    policy = make_policy(a.policy, max_length=a.max_length, seed=a.seed, profile=profile)  # fails before loading
    if a.policy != TARGET_ONLY:
        preflight.check_model(a.draft, "draft")
    preflight.check_model(a.target, "target")
    context = preflight.context_tokens(a.target)
    preflight.check_fits_context(1, a.max_new_tokens, context)  # the prompt has at least one token
    if sys.stderr.isatty():  # a person waits: say what the seconds go to (never in piped or --json use)
        print(f"generate: loading {'the target' if a.policy == TARGET_ONLY else 'the draft and target'} "
              f"model{'' if a.policy == TARGET_ONLY else 's'} ...", file=sys.stderr, flush=True)
    produced: list[int] = []  # the tokens so far: what a signal leaves us to print
    pair = det = None
    stop_on_sigterm()  # SIGTERM, like Ctrl-C, keeps what was produced
    try:  # from the load on: a --json caller gets its object even when the signal comes before the first token
        pair = _pair(a, load_draft=a.policy != TARGET_ONLY)
        ids = pair.tokenizer.encode(a.prompt, add_special_tokens=False)
        preflight.check_fits_context(len(ids), a.max_new_tokens, context)
        from nodes.detokenize import IncrementalDetokenizer

        det = IncrementalDetokenizer(pair.tokenizer)  # as `decode`, so streamed text equals the JSON text
        # the token count on stderr, unless the text itself streams to a terminal (it shows the progress)
        bar, advance = progress(a.json or not sys.stdout.isatty(), "tokens", a.max_new_tokens)

        def on_round(out: list[int]) -> None:
            new = out[len(produced):]
            produced.extend(new)
            if not a.json:  # stream the text as it is produced
                print(det.feed(new), end="", flush=True)
            for _ in new if advance else ():
                advance()

        with bar or contextlib.nullcontext():
            res = speculative_generate(pair, ids, a.max_new_tokens, policy, params, a.seed, delay_ms=a.delay_ms,
                                       on_round=on_round)
    except KeyboardInterrupt:
        if a.json:
            text = pair.tokenizer.decode(produced) if pair is not None else ""
            print(json.dumps({"token_ids": produced, "text": text, "stopped_by_signal": True}))
        elif det is not None:
            print(det.flush(), flush=True)
        raise  # main() answers an interrupt with exit status 130
    if not a.json:
        print(det.flush(), flush=True)
        return
    out = {"token_ids": res.token_ids, "text": res.text, "rounds": res.rounds,
           "accepted_per_round": res.accepted_per_round, "lengths_per_round": res.lengths_per_round,
           "draft_ms": round(res.draft_ms, 3), "verify_ms": round(res.verify_ms, 3),
           "finish_reason": res.finish_reason}
    emit(out, a.json, lambda o: o["text"])


def cmd_theory(a: argparse.Namespace) -> None:
    prof = load_profile(a.profile)
    if a.max_length:
        prof = prof.truncated(a.max_length)
    table = theory_table(prof, a.delays)

    def render(t: dict) -> str:
        lines = [f"profile {t['profile']}: critical delay {t['critical_delay_ms']:.1f} ms",
                 f"{'delay ms':>9} {'best L':>7} {'ms/token':>9}"]
        lines += [f"{r['delay_ms']:>9g} {r['best_length']:>7d} {r['ms_per_token']:>9.2f}" for r in t["rows"]]
        return "\n".join(lines)

    emit(table, a.json, render)


def cmd_simulate_trees(a: argparse.Namespace) -> None:
    from control.tree_sim import load_tree_table, simulate_trees
    from nodes.models.loading import BUNDLED_TREES

    accept, cost = load_tree_table(a.trees if a.trees != "bundled" else BUNDLED_TREES)
    res = simulate_trees(accept, cost, a.delays, rounds=a.rounds, seeds=a.seeds, jitter=a.jitter)
    res["table"] = a.trees

    def render(r: dict) -> str:
        lines = [f"tree table {r['table']} ({r['seeds']} seeds x {r['rounds']} rounds)",
                 f"{'delay':>6} {'oracle shape':>16} {'oracle':>8} {'chain L':>8} {'chain':>8} {'learner':>8} "
                 f"{'gap %':>6} {'chain/learner':>14}"]
        for row in r["rows"]:
            o = row["oracle"]
            lines.append(f"{row['delay_ms']:>6g} {o['depth']:>5}x{o['width']:<3}{o['nodes']:>4} nodes "
                         f"{o['ms_per_token']:>8.2f} {row['best_chain']['length']:>8} "
                         f"{row['best_chain']['ms_per_token']:>8.2f} {row['learner']['ms_per_token']:>8.2f} "
                         f"{row['learner']['gap_to_oracle_pct']:>6.2f} {row['chain_over_learner']:>14.3f}")
        return "\n".join(lines)

    emit(res, a.json, render)


def cmd_simulate_shapes(a: argparse.Namespace) -> None:
    from control.shape_sim import compare
    from pipeline.cli.args import shape_calibration

    a.table = a.shapes
    cal = shape_calibration(a)
    res = compare(cal, a.delays, requests=a.requests, new_tokens=a.new_tokens, seeds=a.seeds, max_nodes=a.max_nodes,
                  max_rounds=a.max_rounds, explore=a.explore, margin=a.margin)
    res["table"] = a.shapes

    def render(r: dict) -> str:
        lines = [f"shapes on {r['table']} ({r['seeds']} seeds x {r['requests']} requests of {r['new_tokens']} tokens)",
                 f"{'delay':>6} {'hindsight best':>18} {'ms/tok':>7} {'model pick':>18} {'ms/tok':>7} {'online':>7} "
                 f"{'gap %':>6}"]
        for row in r["rows"]:
            b, m, o = row["best_in_hindsight"], row["model_pick"], row["online"]
            lines.append(f"{row['delay_ms']:>6g} {b['shape']:>18} {b['ms_per_token']:>7.2f} {m['shape']:>18} "
                         f"{m['ms_per_token']:>7.2f} {o['ms_per_token']:>7.2f} {o['gap_to_hindsight_pct']:>6.2f}")
        return "\n".join(lines)

    emit(res, a.json, render)


def cmd_simulate(a: argparse.Namespace) -> None:
    if a.shapes and a.trees:
        raise ControlError("simulate: --shapes and --trees are two simulations; give one")
    if a.shapes:
        return cmd_simulate_shapes(a)
    if a.trees:
        return cmd_simulate_trees(a)
    if not a.profile:
        raise ControlError("simulate: --profile is required (or --trees for draft-tree shapes)")
    prof = load_profile(a.profile)
    k = min(a.max_length or prof.max_length, prof.max_length)
    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    for p in policies:  # fail fast on a bad spec, before any simulation
        make_policy(p, max_length=k, profile=prof)
    scenarios = build_scenarios(prof.truncated(k), a.scenario, a.delays, a.rounds, a.stay, a.seed, a.dwell_ms)
    bar, advance = progress(not a.json, "simulating", len(scenarios) * len(policies))
    if bar:
        with bar:
            res = simulate(prof, policies, scenarios, a.seeds, max_length=k, jitter=a.jitter, progress=advance,
                           workers=a.workers)
    else:
        res = simulate(prof, policies, scenarios, a.seeds, max_length=k, jitter=a.jitter, workers=a.workers)
    if a.plots:
        from pipeline.analysis.plots import plot_simulation

        res["plots"] = plot_simulation(res, Path(a.plots), scenarios, prof.truncated(k))

    def render(r: dict) -> str:
        lines = [f"profile {r['profile']} ({r['seeds']} seeds, max length {r['max_length']})"]
        for sc in r["scenarios"]:
            lines.append(f"\n{sc['label']}: oracle {sc['oracle']['ms_per_token']:.2f} ms/token "
                         f"(lengths {sc['oracle']['lengths']})")
            for spec, v in sc["policies"].items():
                slope = "n/a" if v["regret_slope"] is None else f"{v['regret_slope']:.2f}"
                lines.append(f"  {spec:<20} {v['ms_per_token']:8.2f} ms/token  gap {v['gap_pct']:+6.2f}% "
                             f"(p90 {v['gap_pct_p90']:+6.2f}%, worst {v['gap_pct_worst']:+6.2f}%; expected {v['expected_gap_pct']:+6.2f}%, "
                             f"worst {v['expected_gap_pct_worst']:+6.2f}%)  regret slope {slope}")
        return "\n".join(lines)

    emit(res, a.json, render)


def register(sub) -> None:
    p = sub.add_parser("train-pair", help="train the bundled byte-level model pair")
    p.add_argument("--out", help="output folder (default: the package's bundled folder)")
    p.add_argument("--steps", type=positive_int, default=700, help="target model training steps")
    p.add_argument("--draft-steps", type=positive_int, default=1200, help="draft model training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=2)
    p.set_defaults(func=cmd_train_pair)

    p = sub.add_parser("train-head", help="train the SpecDec++ acceptance head on the pair's verified drafts")
    p.add_argument("--out", help="output folder (default: the package's bundled head folder)")
    p.add_argument("--windows", type=positive_int, default=5000, help="corpus windows to draft after (8 drafts each)")
    p.add_argument("--epochs", type=positive_int, default=40, help="passes over the verified drafts")
    p.add_argument("--seed", type=int, default=0)
    model_args(p)
    p.set_defaults(func=cmd_train_head)

    p = sub.add_parser("generate", help="generate in-process (draft and target here)")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--policy", default="auto", help="policy spec, or target-only")
    p.add_argument("--max-length", type=positive_int, default=MAX_LENGTH, help="longest draft")
    p.add_argument("--profile", help="control profile for oracle/static/specdec++-delay (default: the bundled pair's)")
    p.add_argument("--delay-ms", type=non_negative_float, default=0.0,
                   help="one-way delay the policy is told (nothing sleeps: in-process)")
    p.add_argument("--temperature", type=non_negative_float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    model_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("theory", help="best draft length per delay and the critical delay")
    p.add_argument("--profile", required=True)
    p.add_argument("--delays", type=delays, default=delays("0,5,10,20,55,83,111,150,250"))
    p.add_argument("--max-length", type=positive_int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_theory)

    p = sub.add_parser("simulate", help="offline simulation of policies against a profile")
    p.add_argument("--profile", help="the chain profile (required unless --trees)")
    p.add_argument("--trees", nargs="?", const="bundled", metavar="TABLE",
                   help="simulate draft-tree shapes instead: the online shape learner vs the oracle shape and "
                        "the best chain per delay, on a table from `bench trees --table-out` (default: the "
                        "bundled pair's)")
    p.add_argument("--shapes", nargs="?", const="bundled", metavar="TABLE",
                   help="simulate every speculation shape instead (chains, trees, rounds in flight, the stream tree) "
                        "in an edge-link-cloud event simulation: per delay the best fixed shape in hindsight, the "
                        "shape chooser's pick and its online form, on the same seeds; TABLE as for --trees")
    p.add_argument("--requests", type=positive_int, default=100, help="--shapes: requests per seed and shape")
    p.add_argument("--explore", type=non_negative_float, default=1.0,
                   help="--shapes: the online chooser tries another family's best with probability explore/sqrt(n)")
    shape_calibration_args(p)
    p.add_argument("--policies", default="auto,ucb-specstop,naive-ucb,hf-heuristic")
    p.add_argument("--delays", type=delays, default=delays(DEFAULT_DELAYS))
    p.add_argument("--rounds", type=positive_int, default=1000)
    p.add_argument("--seeds", type=positive_int, default=20)
    p.add_argument("--scenario", choices=list(SCENARIOS), default="const",
                   help="drift/markov change in wall-clock time; drift-rounds/markov-rounds per round (the paper's)")
    p.add_argument("--stay", type=float, default=0.9,
                   help="markov-rounds: probability of keeping the state each round; markov: sets the default dwell")
    p.add_argument("--dwell-ms", type=positive_float, default=None,
                   help="markov: mean wall-clock time a state holds (default: an oracle round / (1 - stay))")
    p.add_argument("--jitter", type=non_negative_float, default=0.1, help="relative delay jitter per round")
    p.add_argument("--seed", type=int, default=0, help="seed of the channel's state path")
    p.add_argument("--max-length", type=positive_int)
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes a cell's seeds run in (the result does not depend on it)")
    p.add_argument("--plots", help="write PNG plots to this folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_simulate)
