"""Stream-tree widths side by side, in-process: what more children per node buy and cost.

Wider groups cut the misses (the target's token is more often among the children) but every
expanded node costs the edge a draft position. Under device emulation one batched draft forward is
one edge step whatever it holds, so children are free and the widest wins; on this machine's own
speed they are not. This runs `stream_tree_generate` at each width, the widths interleaved per
prompt and repeat (a shared machine's slow spell falls on all of them), and reports per width the
median ms/token, the mean (all time over all tokens: the prompts differ in cost, so the mean is what
a mix of requests pays), the misses and the draft expansions per token; a run whose widths produced
different tokens is refused (greedy output must not depend on the width).

`--auto` adds the width learned online (`edge --stream-width auto`, control/stream_width.py): one
learner per delay, fed each of its requests in turn (told the delay, as the edge's measurement
would; each repeat takes the prompts in a new seeded order, as a cycle would always show a width
re-tried on a doubling schedule the same prompt), its ms/token over all its requests (trials included), the widths it picked, and the median
and mean of its second half (after it had learned; the same prompt mix when the repeats are even).

    python -m pipeline.bench.stream_widths [--widths 2,3,4,8] [--delays 50,0] [--repeats 2] [--auto]
        [--edge-device D --cloud-device D]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys

import torch

from control.stream_width import WidthChoice
from nodes.device import Pacer, load_device
from nodes.models.loading import load_pair
from nodes.models.stream_tree import stream_tree_generate
from nodes.protocol.stream_tree import Limits
from pipeline.bench.proactive import PROMPTS


def _summary(runs: list) -> dict:
    tokens = sum(len(r.token_ids) for r in runs)
    return {"ms_per_token": round(statistics.median(r.ms_per_token for r in runs), 2),
            "mean_ms_per_token": round(sum(r.wall_s for r in runs) * 1e3 / tokens, 2),
            "runs": [round(r.ms_per_token, 2) for r in runs],
            "misses_per_token": round(sum(r.misses for r in runs) / tokens, 4),
            "expansions_per_token": round(sum(r.expansions for r in runs) / tokens, 2),
            "target_forwards_per_token": round(sum(r.verify_forwards for r in runs) / tokens, 3),
            "overruns": sum(r.draft_overruns + r.verify_overruns for r in runs)}  # emulated forwards the CPU outran


def bench_stream_widths(widths: tuple[int, ...] = (2, 3, 4, 8), delays_ms: tuple[float, ...] = (50.0, 0.0),
                        repeats: int = 2, max_new_tokens: int = 64, edge_device: str | None = None,
                        cloud_device: str | None = None, auto: bool = False) -> dict:
    torch.set_num_threads(1)
    pair = load_pair()
    prompts = [list(pair.tokenizer.encode(t)) for t in PROMPTS]
    stream_tree_generate(pair, prompts[0], 16, 0.0)  # warm-up: first forwards pay one-off allocation

    def pacers(i: int) -> dict:
        return {"edge_pacer": Pacer(load_device(edge_device), i) if edge_device else None,
                "cloud_pacer": Pacer(load_device(cloud_device), i) if cloud_device else None}

    out: dict = {"widths": list(widths), "repeats": repeats, "max_new_tokens": max_new_tokens,
                 "edge_device": edge_device, "cloud_device": cloud_device, "refused": [],
                 "load_average_before": round(os.getloadavg()[0], 2)}
    for delay in delays_ms:
        runs: dict[int | str, list] = {w: [] for w in widths} | ({"auto": []} if auto else {})
        learner, picks, rng = WidthChoice(), [], random.Random(0)
        for _ in range(repeats):
            order = rng.sample(range(len(prompts)), len(prompts))  # each repeat the whole mix, in a new order
            for i in order:
                p = prompts[i]
                for w in widths:
                    runs[w].append(stream_tree_generate(pair, p, max_new_tokens, delay, width=w, **pacers(i)))
                if auto:
                    pick = learner.decide(delay, max_new_tokens)
                    r = stream_tree_generate(pair, p, max_new_tokens, delay, width=pick.width, **pacers(i))
                    learner.observe(pick.width, r.wall_s * 1e3, len(r.token_ids), delay, r.judged, r.covered)
                    runs["auto"].append(r)
                    picks.append(f"{pick.width}:{pick.reason}")
        if any([r.token_ids for r in rs] != [r.token_ids for r in runs[widths[0]]] for rs in runs.values()):
            out["refused"].append(f"{delay:g} ms: greedy outputs differ between widths")
        rows = {(k if k == "auto" else f"w{k}"): _summary(rs) for k, rs in runs.items()}
        if auto:
            late = runs["auto"][len(runs["auto"]) // 2:]
            rows["auto"] |= {"picks": picks, "second_half_ms_per_token":
                             round(statistics.median(r.ms_per_token for r in late), 2),
                             "second_half_mean_ms_per_token":
                             round(sum(r.wall_s for r in late) * 1e3 / sum(len(r.token_ids) for r in late), 2)}
        fixed = [k for k in rows if k != "auto"]
        out["load_average_after"] = round(os.getloadavg()[0], 2)
        out[f"delay_{delay:g}ms"] = {"rows": rows, "best": min(fixed, key=lambda k: rows[k]["ms_per_token"]),
                                     "best_by_mean": min(fixed, key=lambda k: rows[k]["mean_ms_per_token"])}
    return out


def _ints(text: str) -> tuple[int, ...]:
    top = Limits().max_width
    try:
        ws = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 2,3,8, got {text!r}") from None
    if not ws or any(not 1 <= w <= top for w in ws):
        raise argparse.ArgumentTypeError(f"widths must be 1..{top}, got {text!r}")
    return ws


def _delays(text: str) -> tuple[float, ...]:
    try:
        ds = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected delays in ms like 50,0, got {text!r}") from None
    if any(not 0 <= d <= 10_000 for d in ds):
        raise argparse.ArgumentTypeError(f"delays must be 0..10000 ms, got {text!r}")
    return ds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench.stream_widths", description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=_ints, default=(2, 3, 4, 8))
    p.add_argument("--delays", type=_delays, default=(50.0, 0.0), help="one-way delays in ms")
    p.add_argument("--repeats", type=int, choices=range(1, 11), default=2, metavar="1..10")
    p.add_argument("--edge-device", help="emulate this edge device (e.g. jetson-orin-nano)")
    p.add_argument("--cloud-device", help="emulate this cloud device (e.g. rtx-3090-ti)")
    p.add_argument("--auto", action="store_true", help="also the width learned online (edge --stream-width auto)")
    a = p.parse_args(argv)
    res = bench_stream_widths(a.widths, a.delays, a.repeats, edge_device=a.edge_device, cloud_device=a.cloud_device,
                              auto=a.auto)
    print(json.dumps(res))
    if res["refused"]:
        print("stream widths bench refused: " + "; ".join(res["refused"]), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
