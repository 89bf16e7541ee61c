"""The proactive row of `specstop bench pipeline`: rounds in flight vs the single chain, wall-clock.

In one process (nodes/models/pipelined.py): the edge drafts in the calling thread, the cloud
verifies in another, and every message waits the one-way delay in real time. At each delay it runs
the plain single chain (one round in flight, no drafting ahead) at several lengths and the pipelined
loop at several (length, rounds in flight), each on a few prompts, and reports medians of ms/token
over the prompts. The best chain length is picked in hindsight from the same run (the baseline's
best case); the pipelined shapes are both the best measured and the one control.proactive_cost
picks from this run's chain measurements (draft ms per token, verify ms, acceptance table), so the
model's choice is checked against the clock. Cloud streaming is modelled as in the 50 ms row: one
target step (measured here) + 2 x one-way delay / new tokens.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from control.proactive_cost import best_pipeline, pipelined_ms_per_token
from nodes.models.loading import load_pair
from nodes.models.pipelined import pipelined_generate
from nodes.models.sessions import TargetSession

PROMPTS = ["Once upon a time", "The cat sat on", "def add(a, b):"]
CHAIN_LENGTHS = {0.0: (1, 2, 3, 4, 6), 50.0: (4, 6, 8, 10, 12)}
PIPELINED = {0.0: ((1, 1), (2, 1), (2, 2), (3, 2)), 50.0: ((8, 1), (2, 3), (3, 3), (4, 2), (2, 6), (3, 5))}


def _median_run(pair, prompts, max_new: int, length: int, rounds: int, delay: float, ahead: bool) -> dict:
    runs = [pipelined_generate(pair, p, max_new, length, rounds, delay, draft_ahead=ahead) for p in prompts]
    return {"ms_per_token": round(statistics.median(r.ms_per_token for r in runs), 2),
            "tokens_per_verdict": round(sum(len(r.token_ids) for r in runs) / sum(r.verdicts for r in runs), 2),
            "misses_per_token": round(sum(r.misses for r in runs) / sum(len(r.token_ids) for r in runs), 3),
            "cancelled_rounds": sum(r.cancelled for r in runs),
            "_runs": runs}


def _target_step_ms(pair, prompts, n: int = 32) -> float:
    times = []
    for p in prompts:
        s = TargetSession(pair.target, p, pair.vocab_size)
        for _ in range(n):
            t = time.perf_counter()
            s.step()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def bench_proactive(delays_ms: tuple[float, ...] = (50.0, 0.0), max_new_tokens: int = 64, threads: int = 1,
                    draft: str | None = None, target: str | None = None) -> dict:
    torch.set_num_threads(threads)
    pair = load_pair(draft, target)
    prompts = [list(pair.tokenizer.encode(t)) for t in PROMPTS]
    pipelined_generate(pair, prompts[0], 16, 4, 2, 0.0)  # warm-up: first forwards pay one-off allocation
    step_ms = _target_step_ms(pair, prompts)
    out: dict = {"pair": [pair.draft_name, pair.target_name], "prompts": len(prompts),
                 "max_new_tokens": max_new_tokens, "torch_threads_per_side": threads,
                 "target_step_ms": round(step_ms, 3)}
    for delay in delays_ms:
        chain = {}
        chain_runs = []
        for n in CHAIN_LENGTHS.get(delay, CHAIN_LENGTHS[0.0]):
            row = _median_run(pair, prompts, max_new_tokens, n, 1, delay, False)
            chain_runs += [(n, r) for r in row.pop("_runs")]
            chain[str(n)] = row
        best_l = min(chain, key=lambda k: chain[k]["ms_per_token"])
        # the cost model's inputs, measured on this run's chains
        per_tok = sum(r.draft_ms for _, r in chain_runs) / sum(n * r.sent for n, r in chain_runs)
        verify = statistics.median(r.verify_ms / r.verdicts for _, r in chain_runs)
        longest = max(n for n, _ in chain_runs)
        acc = [a for n, r in chain_runs if n == longest for a in r.accepted_per_verdict]
        survival = np.array([np.mean([a >= k for a in acc]) for k in range(longest + 1)])  # S(0..longest)
        model_l, model_r, model_ms = best_pipeline(per_tok, verify, delay, survival=survival,
                                                   max_length=longest - 1, max_rounds=8)
        shapes = list(PIPELINED.get(delay, PIPELINED[0.0]))
        if (model_l, model_r) not in shapes:
            shapes.append((model_l, model_r))
        piped = {}
        for n, r in shapes:
            row = _median_run(pair, prompts, max_new_tokens, n, r, delay, True)
            row.pop("_runs")
            row["modelled_ms_per_token"] = round(pipelined_ms_per_token(per_tok, verify, delay, n, r,
                                                                        survival=survival), 2) \
                if n <= longest - 1 else None
            piped[f"L{n}xR{r}"] = row
        best_p = min(piped, key=lambda k: piped[k]["ms_per_token"])
        chain_ms = chain[best_l]["ms_per_token"]
        streaming = step_ms + 2 * delay / max_new_tokens
        model_key = f"L{model_l}xR{model_r}"
        out[f"delay_{int(delay)}ms"] = {
            "chain": chain, "pipelined": piped,
            "best_chain": {"length": int(best_l), "ms_per_token": chain_ms},
            "best_pipelined": {"shape": best_p, "ms_per_token": piped[best_p]["ms_per_token"]},
            "model_choice": {"shape": model_key, "modelled_ms_per_token": round(model_ms, 2),
                             "measured_ms_per_token": piped[model_key]["ms_per_token"]},
            "model_inputs": {"draft_ms_per_token": round(per_tok, 3), "verify_ms": round(verify, 3),
                             "survival": [round(float(s), 3) for s in survival]},
            "best_chain_vs_best_pipelined": round(chain_ms / piped[best_p]["ms_per_token"], 3),
            "best_chain_vs_model_choice": round(chain_ms / piped[model_key]["ms_per_token"], 3),
            "cloud_streaming_ms_per_token_modelled": round(streaming, 3),
            "best_pipelined_vs_cloud_streaming": round(piped[best_p]["ms_per_token"] / streaming, 3),
            "best_chain_vs_cloud_streaming": round(chain_ms / streaming, 3),
        }
    return out
