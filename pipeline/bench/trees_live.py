"""`specstop bench trees --live`: chains vs draft trees through the real pipeline at an emulated delay.

Each row starts its own broker, cloud and edge processes (the edge's link emulation sleeps the
one-way delay each way), sends the same greedy requests one at a time, and reads the edge's round
log: ms/token is a request's summed round time over the tokens its rounds emitted (medians over
requests), so it is measured, not modelled; `wall_ms_per_token_median` is the client's own clock
(a request's whole stream, first round and prefill included) as a cross-check, and `ttft_ms_median`
the client's time to its first chunk. Every row must
produce the same tokens (greedy output does not depend on the shape); `same_output` says whether
they did.

`ahead` adds rows with rounds in flight (`edge --ahead R`, chains of each of `ahead_lengths`): a
round's `round_ms` there is its share of the critical path (nodes/edge_ahead.py), so the same sum
over a request is its wall time. With `repeats` > 1 every row runs that many times, the rows
interleaved (a shared machine's load drifts between rows), and each row reports its median run.

`edge_device` / `cloud_device` emulate devices (nodes/device.py) on every row, the stream tree's
forwards included; `chain_lengths` adds a chain row per fixed length, so the best fixed length in
hindsight is among them (under a slow emulated edge it is short, not 8). With stream rows the output
adds the stream tree against the best fixed chain and chain auto, its ratio to the cloud streaming
(modelled on the emulated cloud), checks against the goal and refusals (pipeline/bench/stream_vs_chain.py).
"""
from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from pathlib import Path

from pipeline.bench.stream_vs_chain import (chain_overruns, refusals, stream_overrun_share,
                                             stream_summary)
from pipeline.errors import PipelineError
from pipeline.orchestration.local import RunConfig, devices_of, local_cluster
from pipeline.orchestration.run_dirs import new_run_dir
from pipeline.orchestration.workload import workload_prompts
from pipeline.transport import aio, bus
from pipeline.transport.client import generate_stream
from schemas.messages import GenerateRequest

# (label, --policy, --tree): the best chain of `bench trees` at 50 ms (depth 8), today's default
# chain policy, fixed spines from small to the best at 50 ms (8x3): the best of them in hindsight
# is tree auto's reference, and the tree the edge's online learner chooses per round
ROWS = (("chain fixed:8", "fixed:8", "off"), ("chain auto", "auto", "off"),
        ("tree 2x2", "auto", "2x2"), ("tree 4x2", "auto", "4x2"), ("tree 8x2", "auto", "8x2"),
        ("tree 8x3", "auto", "8x3"), ("tree auto", "auto", "auto"))


async def _drive(url: str, prompts: list[str], max_new_tokens: int
                 ) -> tuple[list[list[int]], list[float], list[float]]:
    """The requests' tokens, and each one's wall-clock ms/token and time to first token at the client."""
    nc = await bus.connect(url, "bench-trees", long_lived=False)
    try:
        await generate_stream(nc, GenerateRequest("warm-up", prompt=prompts[0], max_new_tokens=8), 120,
                              wait_for_edge_s=30.0)
        outs, walls, ttfts = [], [], []
        for i, p in enumerate(prompts):
            t0 = time.perf_counter()
            res = await generate_stream(nc, GenerateRequest(f"live-{i}", prompt=p, max_new_tokens=max_new_tokens), 120)
            if not res.ok:
                raise RuntimeError(f"request {i} failed: {res.error}")
            outs.append(res.token_ids)
            walls.append((time.perf_counter() - t0) * 1e3 / max(1, len(res.token_ids)))
            if res.chunk_times_s:  # a stream that succeeded has its final chunk at least
                ttfts.append(res.chunk_times_s[0] * 1e3)
        return outs, walls, ttfts
    finally:
        await nc.close()


def _rounds(run_dir: Path, event: str = "round", node: str = "edge-1") -> list[dict]:
    lines = (run_dir / f"{node}.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines)
            if e.get("event") == event and e.get("request_id", "").startswith("live-")]


def _emulation_fields(run_dir: Path, stream: bool, emulation: dict | None) -> dict:
    """Whether this machine kept up with the emulated devices in a row (refused in the output when not)."""
    if emulation is None:
        return {}
    if stream:
        ends = [e for e in _rounds(run_dir, "session_end", "cloud-1") if e.get("stream_tree")]
        share = stream_overrun_share(_rounds(run_dir, "stream_done"), ends)
        return {"emulation_overrun_share": None if share is None else round(share, 4)}
    refused = chain_overruns(_rounds(run_dir), emulation)
    return {"emulation_refusal": refused.why} if refused else {}


def _stream_row(verdicts: list[dict], done: list[dict], rounds: list[dict] = ()) -> dict:
    """A stream-tree row from the edge's `stream_verdict` events: a request's ms/token is its summed gaps
    between verdicts (from the end of the draft's prefill, as a chain's first round) over its tokens.
    Under `--stream-tree auto` a request served by rounds counts by its rounds, as a chain row's."""
    by_req: dict[str, list[tuple[float, int]]] = {}
    for v in verdicts:
        by_req.setdefault(v["request_id"], []).append((v["gap_ms"], v["tokens"]))
    for r in rounds:
        by_req.setdefault(r["request_id"], []).append((r["round_ms"], r["tokens"]))
    per_req = [sum(ms for ms, _ in xs) / max(1, sum(n for _, n in xs)) for xs in by_req.values()]
    if not per_req:  # nothing was measured: a row without a time is not a result
        raise PipelineError("bench trees: a stream row logged no verdict and no round (see its run directory's "
                            "edge-1.jsonl)")
    tokens = sum(d["tokens"] for d in done)
    all_ms = sum(ms for xs in by_req.values() for ms, _ in xs)
    all_tokens = sum(n for xs in by_req.values() for _, n in xs)
    return {"ms_per_token_median": round(statistics.median(per_req), 2),
            "ms_per_token_per_request": [round(x, 2) for x in per_req],
            "ms_per_token_mean": round(all_ms / max(1, all_tokens), 2),  # what the mix of requests paid
            "widths": [d.get("width") for d in done],  # per stream request (`--stream-width auto`: learned)
            "rounds": len(verdicts),
            "tokens_per_round_mean": round(sum(v["tokens"] for v in verdicts) / max(1, len(verdicts)), 3),
            "round_ms_median": round(statistics.median(v["gap_ms"] for v in verdicts), 2) if verdicts else None,
            "round_trips_per_token": round(sum(d["misses"] for d in done) / max(1, tokens), 4),
            "expansions_per_token": round(sum(d["expansions"] for d in done) / max(1, tokens), 2),
            "stale_groups_per_token": round(sum(d["stale_groups"] for d in done) / max(1, tokens), 2),
            "resends": sum(d["resends"] for d in done), "stream_requests": len(done),
            "round_requests": len({r["request_id"] for r in rounds})}


def _row(rounds: list[dict]) -> dict:
    by_req: dict[str, list[dict]] = {}
    for r in rounds:
        by_req.setdefault(r["request_id"], []).append(r)
    per_req = [sum(r["round_ms"] for r in rs) / max(1, sum(r["tokens"] for r in rs)) for rs in by_req.values()]
    return {"ms_per_token_median": round(statistics.median(per_req), 2),
            "ms_per_token_per_request": [round(x, 2) for x in per_req],
            "rounds": len(rounds), "tokens_per_round_mean": round(sum(r["tokens"] for r in rounds) / len(rounds), 3),
            "round_ms_median": round(statistics.median(r["round_ms"] for r in rounds), 2),
            "draft_ms_median": round(statistics.median(r["draft_ms"] for r in rounds), 2),
            "verify_ms_median": round(statistics.median(r["verify_ms"] for r in rounds), 2),
            "nodes_median": statistics.median(r["draft_length"] for r in rounds),
            "shapes_last_half": _shapes(rounds[len(rounds) // 2:])}


def _shapes(rounds: list[dict]) -> dict[str, int]:
    """How often each shape (depth x nodes; chains: length) was played, most played first."""
    seen = Counter(f"depth {r['tree_depth']}, {r['draft_length']} nodes" if r.get("tree_depth") is not None
                   else f"chain {r['draft_length']}" for r in rounds)
    return dict(seen.most_common(5))


def row_specs(ahead: tuple[int, ...] = (), ahead_lengths: tuple[int, ...] = (2, 4),
              trees: bool = True, ahead_trees: tuple[str, ...] = (),
              stream: tuple[int, ...] = (), stream_auto: tuple[int, ...] = (),
              chain_lengths: tuple[int, ...] = (), stream_batch: int | None = None,
              stream_fill: tuple[int, ...] = (), stream_width_auto: bool = False) -> list[tuple[str, str, str, int]]:
    """(label, --policy, --tree, --ahead) per row: ROWS (chains only without `trees`), then a chain of
    each length and a tree of each shape in `ahead_trees` with each number of rounds in flight, then
    the stream tree of each width in `stream` (--tree "stream:W": `edge --stream-tree --stream-width W`)
    and in `stream_auto` ("stream:W:auto": `edge --stream-tree auto`, the stream tree or rounds per
    request by the cost rule on the edge's own measurements). `chain_lengths`: a chain row per fixed length
    (beside ROWS' fixed:8). `stream_batch`: nodes per draft forward on every stream row ("stream:W:bN",
    labelled "bN"; None: the edge's default). `stream_fill`: the stream tree of each width with the cloud
    filling its idle time ("stream:W:fill": `cloud --stream-fill`), reported apart from speculation.
    `stream_width_auto`: the stream tree with its width learned per request ("stream:learn": `edge
    --stream-width auto`; its edge keeps one learner over the row's requests)."""
    rows = [(label, policy, tree, 1) for label, policy, tree in ROWS if trees or tree == "off"]
    have = {policy for _, policy, tree, _ in rows if tree == "off"}
    rows[:0] = [(f"chain fixed:{n}", f"fixed:{n}", "off", 1) for n in chain_lengths if f"fixed:{n}" not in have]
    rows += [(f"chain fixed:{n} ahead {r}", f"fixed:{n}", "off", r) for r in ahead for n in ahead_lengths]
    rows += [(f"tree {shape} ahead {r}", "fixed:8", shape, r) for r in ahead for shape in ahead_trees]
    b = "" if stream_batch is None else f":b{stream_batch}"
    lb = "" if stream_batch is None else f" b{stream_batch}"
    rows += [(f"stream tree w{w}{lb}", "auto", f"stream:{w}{b}", 1) for w in stream]
    rows += [(f"stream tree auto w{w}{lb}", "auto", f"stream:{w}{b}:auto", 1) for w in stream_auto]
    rows += [(f"stream tree w{w}{lb} fill", "auto", f"stream:{w}{b}:fill", 1) for w in stream_fill]
    if stream_width_auto:
        rows.append((f"stream tree w-auto{lb}", "auto", f"stream:{LEARN}{b}", 1))
    return rows


LEARN = "learn"  # the width in a stream row's spec when the edge learns it (`--stream-width auto`)


def _is_stream(tree: str) -> bool:
    return tree.startswith("stream:")


def is_fill(tree: str) -> bool:
    """A stream row whose cloud fills its idle time (the cloud generating on its own, not speculation)."""
    return _is_stream(tree) and tree.endswith(":fill")


def _node_flags(tree: str, ahead: int) -> dict[str, list[str]]:
    return {"edge": _edge_flags(tree, ahead), **({"cloud": ["--stream-fill"]} if is_fill(tree) else {})}


def _fill_fields(run_dir: Path, tree: str) -> dict:
    """A fill row's cloud work per token: target forwards and tokens it decided on its own (session_end)."""
    if not is_fill(tree):
        return {}
    ends = [e for e in _rounds(run_dir, "session_end", "cloud-1") if e.get("stream_tree")]
    tokens = sum(d["tokens"] for d in _rounds(run_dir, "stream_done"))
    return {"filled_per_token": round(sum(e.get("fills", 0) for e in ends) / max(1, tokens), 3),
            "target_forwards_per_token": round(sum(e.get("verify_forwards", 0) for e in ends) / max(1, tokens), 3)}


def _edge_flags(tree: str, ahead: int) -> list[str]:
    if _is_stream(tree):
        _, width, *rest = tree.split(":")
        batch = [f"--stream-batch={x[1:]}" for x in rest if x.startswith("b")]
        return ["--stream-tree", "auto" if "auto" in rest else "on",
                "--stream-width", "auto" if width == LEARN else width, *batch]
    return ["--tree", tree] + (["--ahead", str(ahead)] if ahead > 1 else [])


def _ratio(a: dict, b: dict, key: str = "ms_per_token_median") -> float:
    return round(a[key] / b[key], 3)


def bench_trees_live(delay_ms: float = 50.0, requests: int = 6, max_new_tokens: int = 64, run_root: str = "runs",
                     draft: str | None = None, target: str | None = None, ahead: tuple[int, ...] = (),
                     ahead_lengths: tuple[int, ...] = (2, 4), trees: bool = True, repeats: int = 1,
                     ahead_trees: tuple[str, ...] = (), stream: tuple[int, ...] = (),
                     stream_auto: tuple[int, ...] = (), edge_device: str | None = None,
                     cloud_device: str | None = None, chain_lengths: tuple[int, ...] = (),
                     stream_batch: int | None = None, stream_fill: tuple[int, ...] = (),
                     stream_width_auto: bool = False) -> dict:
    prompts = workload_prompts(requests, seed=3)
    specs = row_specs(ahead, ahead_lengths, trees, ahead_trees, stream, stream_auto, chain_lengths, stream_batch,
                      stream_fill, stream_width_auto)
    runs: dict[str, list[dict]] = {label: [] for label, *_ in specs}
    outputs = []
    for _ in range(repeats):
        for label, policy, tree, r in specs:
            run_dir = new_run_dir(run_root)
            cfg = RunConfig(channel=f"const:{delay_ms:g}", policy=policy, local_policy=True, draft=draft,
                            target=target, run_root=run_root, node_flags=_node_flags(tree, r),
                            edge_device=edge_device, cloud_device=cloud_device)
            emulation = devices_of(cfg)
            with local_cluster(run_dir, cfg) as url:
                outs, walls, ttfts = aio.run(_drive(url, prompts, max_new_tokens))
            outputs.append(outs)
            measured = (_stream_row(_rounds(run_dir, "stream_verdict"), _rounds(run_dir, "stream_done"),
                                    _rounds(run_dir))
                        if _is_stream(tree) else _row(_rounds(run_dir)))
            runs[label].append({"row": label, "policy": policy, "tree": tree, "ahead": r, "run_dir": str(run_dir),
                                **measured, **_fill_fields(run_dir, tree),
                                **_emulation_fields(run_dir, _is_stream(tree), emulation),
                                "wall_ms_per_token_median": round(statistics.median(walls), 2),
                                "ttft_ms_median": round(statistics.median(ttfts), 2) if ttfts else None})
    rows = []
    for label, *_ in specs:
        rows.append(median_row(runs[label]))
    chains = [r for r in rows if r["tree"] == "off" and r["ahead"] == 1]
    best_chain = min(chains, key=lambda r: r["ms_per_token_median"])
    same = all(o == outputs[0] for o in outputs)
    emulation = devices_of(RunConfig(edge_device=edge_device, cloud_device=cloud_device))
    out = {"delay_ms": delay_ms, "requests": requests, "max_new_tokens": max_new_tokens, "repeats": repeats,
           "emulation": emulation, "rows": rows, "same_output": same, "best_chain": best_chain["row"]}
    kinds = {"tree": lambda r: r["tree"] != "off" and not _is_stream(r["tree"]) and r["ahead"] == 1,
             "stream_tree": lambda r: _is_stream(r["tree"]) and not r["tree"].endswith((":auto", ":fill")),
             "stream_tree_fill": lambda r: is_fill(r["tree"]),
             "stream_tree_auto": lambda r: r["tree"].endswith(":auto"),
             "chain_ahead": lambda r: r["tree"] == "off" and r["ahead"] > 1,
             "tree_ahead": lambda r: r["tree"] != "off" and r["ahead"] > 1}
    for kind, is_kind in kinds.items():
        of_kind = [r for r in rows if is_kind(r)]
        if of_kind:
            best = min(of_kind, key=lambda r: r["ms_per_token_median"])
            out |= {f"best_{kind}": best["row"], f"best_chain_over_best_{kind}": _ratio(best_chain, best),
                    f"best_chain_over_best_{kind}_wall": _ratio(best_chain, best, "wall_ms_per_token_median")}
    rounds = [r for r in rows if r["ahead"] == 1 and not _is_stream(r["tree"])]
    if any(r["tree"] not in ("off", "auto") for r in rounds):
        out |= summary(rounds)
    if any(r["ahead"] > 1 for r in rows):
        out["default_row"] = "chain auto (--ahead 1 by default: rounds in flight are never chosen unless asked)"
    out |= stream_summary(rows, delay_ms, emulation)
    out["refused"] = refusals(rows, same)
    return out


def median_row(runs: list[dict]) -> dict:
    """One row from its repeats: the lower-middle run's fields, with ms/token (and wall ms/token) the
    true median over the runs. Why: with an even count the lower-middle run is the faster of the middle
    two, which would flatter the noisiest rows most."""
    done = sorted(runs, key=lambda x: x["ms_per_token_median"])
    row = dict(done[(len(done) - 1) // 2])
    if len(runs) > 1:
        row["ms_per_token_runs"] = [x["ms_per_token_median"] for x in runs]
        row["ms_per_token_median"] = round(statistics.median(row["ms_per_token_runs"]), 2)
        row["wall_ms_per_token_median"] = round(statistics.median(x["wall_ms_per_token_median"] for x in runs), 2)
        if all(x.get("ttft_ms_median") is not None for x in runs):
            row["ttft_ms_median"] = round(statistics.median(x["ttft_ms_median"] for x in runs), 2)
    return row


def summary(rows: list[dict]) -> dict:
    """The run's own references: the best chain row, the best fixed tree in hindsight (tree auto is
    not a fixed shape, so never its own reference), and tree auto against both."""
    j = {r["row"]: r["ms_per_token_median"] for r in rows}
    chains = [r["row"] for r in rows if r["tree"] == "off"]
    fixed = [r["row"] for r in rows if r["tree"] not in ("off", "auto")]
    best_chain, best_fixed = min(chains, key=j.get), min(fixed, key=j.get)
    best_tree = min([*fixed, *(r["row"] for r in rows if r["tree"] == "auto")], key=j.get)
    out = {"best_chain": best_chain, "best_fixed_tree": best_fixed, "best_tree": best_tree,
           "best_chain_over_best_tree": round(j[best_chain] / j[best_tree], 3)}
    if "tree auto" in j:
        out |= {"tree_auto_over_best_fixed_tree": round(j["tree auto"] / j[best_fixed], 3),
                "best_chain_over_tree_auto": round(j[best_chain] / j["tree auto"], 3)}
    return out
