"""The proactive row of `specstop bench pipeline`: rounds in flight vs the single chain, wall-clock.

In one process (nodes/models/pipelined.py): the edge drafts in the calling thread, the cloud
verifies in another, and every message waits the one-way delay in real time. At each delay it runs
the plain single chain (one round in flight, no drafting ahead) at several lengths, the pipelined
loop at several (length, rounds in flight), and the same with spine trees, on a few prompts.
First a calibration pass of the chains gives control.proactive_cost its inputs (draft ms per
token, verify ms, per-token acceptance), and the model picks a shape (the plain chain included).
Then every shape, the model's pick included, is measured with the runs interleaved (each shape
once per prompt per repeat, in turn), so that a slow spell of a shared machine falls on all shapes
alike; medians over prompts x repeats are reported. The continuous speculation tree
(nodes/models/stream_tree.py) runs in the same interleaved pass; its cost rule
(control/stream_tree_cost.py, fed by a zero-delay calibration run) picks it or the chain model's pick. The best chain length is picked in hindsight
from the same pass (the baseline's best case). Cloud streaming is modelled as in the 50 ms row:
one target step (measured here) + 2 x one-way delay / new tokens.

Both models share this process: small models are bound by Python, which holds one interpreter
lock, so drafting ahead and verifying do not overlap here as they would on an edge and a cloud;
the model is told so (overlap=False).
"""
from __future__ import annotations

import statistics
import time

import torch

from control.proactive_cost import best_pipeline, pipelined_ms_per_token
from control.stream_tree_cost import prefer_stream_tree
from control.trees import spine
from nodes.models.loading import load_pair
from nodes.models.pipelined import pipelined_generate
from nodes.models.sessions import TargetSession
from nodes.models.stream_tree import stream_tree_generate

PROMPTS = ["Once upon a time", "The cat sat on", "def add(a, b):"]
# (name, length or tree depth, tree width or None for a chain, rounds in flight, draft ahead)
Shape = tuple[str, int, "int | None", int, bool]
SHAPES: dict[float, list[Shape]] = {
    0.0: [("chain L1", 1, None, 1, False), ("chain L2", 2, None, 1, False), ("chain L3", 3, None, 1, False),
          ("chain L4", 4, None, 1, False),
          ("ahead L2xR1", 2, None, 1, True), ("ahead L2xR2", 2, None, 2, True), ("ahead L3xR2", 3, None, 2, True),
          ("tree 2x2", 2, 2, 1, False), ("tree-ahead 2x2xR2", 2, 2, 2, True)],
    50.0: [("chain L6", 6, None, 1, False), ("chain L8", 8, None, 1, False), ("chain L10", 10, None, 1, False),
           ("chain L12", 12, None, 1, False),
           ("ahead L8xR1", 8, None, 1, True), ("ahead L2xR3", 2, None, 3, True), ("ahead L3xR3", 3, None, 3, True),
           ("ahead L3xR6", 3, None, 6, True),
           ("tree 8x3", 8, 3, 1, False), ("tree-ahead 3x3xR3", 3, 3, 3, True),
           ("tree-ahead 3x3xR6", 3, 3, 6, True), ("tree-ahead 2x3xR8", 2, 3, 8, True)],
}

# the continuous speculation tree (nodes/models/stream_tree.py): (name, keyword arguments)
STREAM: dict[float, list[tuple[str, dict]]] = {
    0.0: [("stream tree w2", {})],
    50.0: [("stream tree w2", {}), ("stream tree w3", {"width": 3, "cumulative": 0.9})],
}
# the same with the cloud filling its idle time (docs/stream-tree.md, "The cloud fills its idle time")
FILL: dict[float, list[tuple[str, dict]]] = {
    0.0: [("stream tree w2 fill", {"fill": True})],
    50.0: [("stream tree w2 fill", {"fill": True})],
}


def _target_step_ms(pair, prompt: list[int], n: int) -> float:
    """Median ms of one target-only decoding step (the cloud streaming its own generation)."""
    s = TargetSession(pair.target, prompt, pair.vocab_size)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        s.step()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _run(pair, prompt, max_new: int, shape: Shape, delay: float):
    _, n, width, rounds, ahead = shape
    return pipelined_generate(pair, prompt, max_new, n, rounds, delay, draft_ahead=ahead,
                              tree=spine(n, width) if width else None)


def _row(runs) -> dict:
    tokens = sum(len(r.token_ids) for r in runs)
    return {"ms_per_token": round(statistics.median(r.ms_per_token for r in runs), 2),
            "tokens_per_verdict": round(tokens / sum(r.verdicts for r in runs), 2),
            "round_trips_per_token": round(sum(r.misses for r in runs) / tokens, 3),
            "cancelled_rounds": sum(r.cancelled for r in runs)}


def _stream_row(runs) -> dict:
    tokens = sum(len(r.token_ids) for r in runs)
    return {"ms_per_token": round(statistics.median(r.ms_per_token for r in runs), 2),
            "tokens_per_verify_forward": round(tokens / sum(r.verify_forwards for r in runs), 2),
            "round_trips_per_token": round(sum(r.misses for r in runs) / tokens, 3),
            "draft_expansions_per_token": round(sum(r.expansions for r in runs) / tokens, 2),
            "cloud_wait_share": round(sum(r.cloud_wait_ms for r in runs) / sum(r.wall_s * 1e3 for r in runs), 3),
            "stale_groups_per_token": round(sum(r.stale_groups for r in runs) / tokens, 2),
            "target_forwards_per_token": round(sum(r.verify_forwards for r in runs) / tokens, 3),
            "filled_per_token": round(sum(r.fills for r in runs) / tokens, 3)}


def _model_inputs(chain_runs) -> tuple[float, float, float]:
    """(draft ms per token, verify ms per round, per-token acceptance alpha) from plain chain runs.
    alpha is the censored estimate: accepted drafts / (accepted drafts + rejections), a rejection
    being a round that accepted fewer than it drafted."""
    drafted = sum(len(r.accepted_per_verdict) * n for n, r in chain_runs)
    per_tok = sum(r.draft_ms for _, r in chain_runs) / drafted
    verify = statistics.median(r.verify_ms / r.verdicts for _, r in chain_runs)
    acc = sum(sum(r.accepted_per_verdict) for _, r in chain_runs)
    rej = sum(sum(a < n for a in r.accepted_per_verdict) for n, r in chain_runs)
    return per_tok, verify, acc / (acc + rej)


def bench_proactive(delays_ms: tuple[float, ...] = (50.0, 0.0), max_new_tokens: int = 64, repeats: int = 2,
                    threads: int = 1, draft: str | None = None, target: str | None = None) -> dict:
    torch.set_num_threads(threads)
    pair = load_pair(draft, target)
    prompts = [list(pair.tokenizer.encode(t)) for t in PROMPTS]
    pipelined_generate(pair, prompts[0], 16, 4, 2, 0.0)  # warm-up: first forwards pay one-off allocation
    out: dict = {"pair": [pair.draft_name, pair.target_name], "prompts": len(prompts), "repeats": repeats,
                 "max_new_tokens": max_new_tokens, "torch_threads_per_side": threads}
    # the stream tree's cost model: compute per token at zero delay, misses per token (delay-free)
    st_cal = [stream_tree_generate(pair, p, max_new_tokens, 0.0) for p in prompts]
    st_compute = statistics.median(r.ms_per_token for r in st_cal)
    st_misses = sum(r.misses for r in st_cal) / sum(len(r.token_ids) for r in st_cal)
    out["stream_tree_model_inputs"] = {"compute_ms_per_token": round(st_compute, 3),
                                       "misses_per_token": round(st_misses, 4)}
    for delay in delays_ms:
        shapes = list(SHAPES.get(delay, SHAPES[0.0]))
        streams = list(STREAM.get(delay, STREAM[0.0]))
        fills = list(FILL.get(delay, FILL[0.0]))
        calibration = [(s[1], _run(pair, p, max_new_tokens, s, delay)) for p in prompts for s in shapes
                       if s[0].startswith("chain")]
        per_tok, verify, alpha = _model_inputs(calibration)
        model_l, model_r, model_ahead, model_ms = best_pipeline(per_tok, verify, delay, alpha=alpha, max_length=12,
                                                                overlap=False)
        model_shape: Shape = (f"model {'ahead' if model_ahead else 'chain'} L{model_l}xR{model_r}", model_l, None,
                              model_r, model_ahead)
        shapes.append(model_shape)
        runs: dict[str, list] = {s[0]: [] for s in shapes}
        st_runs: dict[str, list] = {name: [] for name, _ in streams + fills}
        steps: list[float] = []
        for _ in range(repeats):  # interleaved: each shape once per prompt, in turn
            for p in prompts:
                steps.append(_target_step_ms(pair, p, max_new_tokens))
                for s in shapes:
                    runs[s[0]].append(_run(pair, p, max_new_tokens, s, delay))
                for name, kw in streams + fills:
                    st_runs[name].append(stream_tree_generate(pair, p, max_new_tokens, delay, **kw))
        step_ms = statistics.median(steps)
        rows = {name: _row(rs) for name, rs in runs.items()}
        rows.update({name: _stream_row(rs) for name, rs in st_runs.items()})
        for s in shapes:
            if s[2] is None:
                rows[s[0]]["modelled_ms_per_token"] = round(pipelined_ms_per_token(
                    per_tok, verify, delay, s[1], s[3], alpha=alpha, draft_ahead=s[4], overlap=False), 2)
        chains = [n for n in rows if n.startswith("chain")]
        best_chain = min(chains, key=lambda n: rows[n]["ms_per_token"])
        others = [n for n in rows if not n.startswith("chain")]
        # fill rows are the cloud generating on its own (an option that spends a forward per token),
        # reported apart under stream_tree_fill, so best_overall stays the best speculation shape
        best = min((n for n in others if n not in dict(fills)), key=lambda n: rows[n]["ms_per_token"])
        best_chain_pipe = min((n for n in others if n.startswith(("ahead", "model ahead"))),
                              key=lambda n: rows[n]["ms_per_token"])
        chain_ms = rows[best_chain]["ms_per_token"]
        streaming = step_ms + 2 * delay / max_new_tokens

        def vs(name: str) -> float:
            return round(chain_ms / rows[name]["ms_per_token"], 3)

        best_stream = min((n for n, _ in streams), key=lambda n: rows[n]["ms_per_token"])
        best_fill = min((n for n, _ in fills), key=lambda n: rows[n]["ms_per_token"])
        use_stream, st_model_ms = prefer_stream_tree(model_ms, st_compute, st_misses, delay, max_new_tokens)
        chosen = streams[0][0] if use_stream else model_shape[0]
        out[f"delay_{int(delay)}ms"] = {
            "rows": rows,
            "best_chain": {"shape": best_chain, "ms_per_token": chain_ms},
            "best_pipelined_chain": {"shape": best_chain_pipe, "ms_per_token": rows[best_chain_pipe]["ms_per_token"],
                                     "speedup_vs_best_chain": vs(best_chain_pipe)},
            "best_overall": {"shape": best, "ms_per_token": rows[best]["ms_per_token"], "speedup_vs_best_chain": vs(best)},
            "model_choice": {"shape": model_shape[0], "modelled_ms_per_token": round(model_ms, 2),
                             "measured_ms_per_token": rows[model_shape[0]]["ms_per_token"],
                             "speedup_vs_best_chain": vs(model_shape[0])},
            "stream_tree": {"shape": best_stream, "ms_per_token": rows[best_stream]["ms_per_token"],
                            "speedup_vs_best_chain": vs(best_stream),
                            "round_trips_per_token": rows[best_stream]["round_trips_per_token"],
                            "best_chain_round_trips_per_token": rows[best_chain]["round_trips_per_token"]},
            "stream_tree_fill": {"shape": best_fill, "ms_per_token": rows[best_fill]["ms_per_token"],
                                 "speedup_vs_best_chain": vs(best_fill),
                                 "vs_cloud_streaming": round(rows[best_fill]["ms_per_token"] / streaming, 3),
                                 "target_forwards_per_token": rows[best_fill]["target_forwards_per_token"],
                                 "without_fill_target_forwards_per_token":
                                     rows[best_stream]["target_forwards_per_token"]},
            "stream_tree_choice": {"shape": chosen, "stream_tree_modelled_ms_per_token": round(st_model_ms, 2),
                                   "chain_modelled_ms_per_token": round(model_ms, 2),
                                   "measured_ms_per_token": rows[chosen]["ms_per_token"],
                                   "speedup_vs_best_chain": vs(chosen)},
            "model_inputs": {"draft_ms_per_token": round(per_tok, 3), "verify_ms": round(verify, 3),
                             "alpha": round(alpha, 3), "overlap": False},
            "target_step_ms": round(step_ms, 3),
            "cloud_streaming_ms_per_token_modelled": round(streaming, 3),
            "best_chain_vs_cloud_streaming": round(chain_ms / streaming, 3),
            "best_overall_vs_cloud_streaming": round(rows[best]["ms_per_token"] / streaming, 3),
        }
    return out
