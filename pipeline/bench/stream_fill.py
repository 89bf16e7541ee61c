"""The stream tree with and without the cloud filling its idle time, in-process, under device emulation.

`specstop bench pipeline --only proactive` runs on this machine's own speed and has no device
emulation; this runs `stream_tree_generate` with both sides paced (nodes/device.py: by default a
Jetson Orin Nano edge and an RTX 3090 Ti cloud), fill off and on, on the proactive bench's prompts,
and reports per row the median ms/token, the target forwards per token (what a shared cloud pays)
and the share of tokens the cloud filled itself. The chains are not run here: compare with the live
bench's rows under the same devices (docs/stream-tree.md, "With device emulation").

    python -m pipeline.bench.stream_fill [out.json]
"""
from __future__ import annotations

import json
import statistics
import sys

import torch

from nodes.device import Pacer, load_device
from nodes.models.loading import load_pair
from nodes.models.stream_tree import stream_tree_generate
from pipeline.bench.proactive import PROMPTS
from pipeline.experiments.refusals import MAX_OVERRUN_SHARE

ROWS: list[tuple[str, dict]] = [("w2", {}), ("w2 fill", {"fill": True}), ("w3", {"width": 3, "cumulative": 0.9}),
                                ("w3 fill", {"width": 3, "cumulative": 0.9, "fill": True})]


def bench_stream_fill(delays_ms: tuple[float, ...] = (50.0, 0.0), max_new_tokens: int = 64,
                      edge_device: str = "jetson-orin-nano", cloud_device: str = "rtx-3090-ti") -> dict:
    torch.set_num_threads(1)
    pair = load_pair()
    prompts = [list(pair.tokenizer.encode(t)) for t in PROMPTS]
    out: dict = {"edge_device": edge_device, "cloud_device": cloud_device, "max_new_tokens": max_new_tokens}
    refused: list[str] = []
    for delay in delays_ms:
        outputs: dict[str, list[list[int]]] = {}
        for name, kw in ROWS:
            rs = [stream_tree_generate(pair, p, max_new_tokens, delay, edge_pacer=Pacer(load_device(edge_device), i),
                                       cloud_pacer=Pacer(load_device(cloud_device), i), **kw)
                  for i, p in enumerate(prompts)]
            tok = sum(len(r.token_ids) for r in rs)
            outputs[name] = [r.token_ids for r in rs]
            forwards = sum(r.verify_forwards + r.draft_forwards for r in rs)
            over = sum(r.draft_overruns + r.verify_overruns for r in rs)
            if over > MAX_OVERRUN_SHARE * max(1, forwards):
                refused.append(f"{int(delay)}ms {name}: {over} of {forwards} forwards outran the emulated devices "
                               "(machine too loaded to emulate them)")
            out[f"{int(delay)}ms {name}"] = {
                "ms_per_token": round(statistics.median(r.ms_per_token for r in rs), 2),
                "runs": [round(r.ms_per_token, 2) for r in rs],
                "target_forwards_per_token": round(sum(r.verify_forwards for r in rs) / tok, 3),
                "filled_per_token": round(sum(r.fills for r in rs) / tok, 3),
                "round_trips_per_token": round(sum(r.misses for r in rs) / tok, 3),
                "cloud_wait_share": round(sum(r.cloud_wait_ms for r in rs) / sum(r.wall_s * 1e3 for r in rs), 3),
                "overruns": over}
        if any(o != outputs[ROWS[0][0]] for o in outputs.values()):
            refused.append(f"{int(delay)}ms: greedy outputs differ between rows (fill must not change the tokens)")
    out["refused"] = refused
    return out


if __name__ == "__main__":
    res = bench_stream_fill()
    text = json.dumps(res, indent=1)
    if len(sys.argv) > 1:
        open(sys.argv[1], "w").write(text)
    print(text)
    if res["refused"]:
        print("stream fill bench refused: " + "; ".join(res["refused"]), file=sys.stderr)
        sys.exit(3)
