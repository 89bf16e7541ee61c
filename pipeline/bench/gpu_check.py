"""One prepared GPU check (issue 22): `PYTHONPATH=. python -m pipeline.bench.gpu_check [--device cpu --shape tiny]`.

Parts, each try/except'd (one failure keeps the rest; the greedy parts stop at a deadline; run the whole
under `timeout`), results saved after each into
$OUT/gpu_check.json: greedy equality of every policy vs target-only on the bundled pair (float32 and
bfloat16), a placement check (every module call on the device, in the dtype), sampled rounds of every
policy (they run), the static/graph verify path vs eager on the bundled pair, `bench verify --shape` at
batch 1/8/32/64 (eager step, fast step, per-request, bare forward eager and as a CUDA graph, floor), verdict
flips (fast, batch-invariant, per-request vs eager batched), the prefill measurement and its stall.
Imports only the model code and what it needs (no broker, no logging stack).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback

import torch

RES: dict = {}
OUT = os.environ.get("OUT", "/tmp")


def save() -> None:
    with open(os.path.join(OUT, "gpu_check.json"), "w") as f:
        json.dump(RES, f, indent=1)


def part(name: str, fn, *args) -> None:
    t0 = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    try:
        RES[name] = fn(*args)
    except Exception:
        RES[name] = {"error": traceback.format_exc()[-2000:]}
    RES.setdefault("secs", {})[name] = round(time.time() - t0, 1)
    print(f"  {name} ({RES['secs'][name]} s): {json.dumps(RES[name])[:700]}", flush=True)
    save()


POLICIES = ["fixed:1", "fixed:3", "fixed:8", "hf-heuristic", "auto", "specdec++"]


def greedy_per_policy(device: str, dtype: str, n: int, tokens: int, deadline: float) -> dict:
    from nodes.models.loading import load_pair
    from nodes.speculative import speculative_generate, target_only_generate
    from pipeline.bench.engine import bench_prompts

    pair = load_pair(device=device, dtype=dtype)
    out: dict = {"dtype": pair.dtype, "cases": 0, "equal": 0, "diffs": [], "errors": {}}
    for p in bench_prompts(pair, n=n, chars=200):
        if time.time() > deadline:
            out["cut_short"] = True
            break
        _every_policy(out, pair, p, tokens, speculative_generate, target_only_generate(pair, p, tokens).token_ids)
    return out


def _every_policy(out: dict, pair, prompt, tokens: int, generate, ref: list[int]) -> None:
    """Every policy's greedy output on `prompt` against target-only's `ref`, counted into `out`."""
    from control import make_policy

    for pol in POLICIES:
        try:
            r = generate(pair, prompt, tokens, make_policy(pol))
        except Exception as e:
            out["errors"][pol] = str(e).splitlines()[0][:200]
            continue
        out["cases"] += 1
        out["equal"] += r.token_ids == ref
        if r.token_ids != ref:
            first = next((i for i, (a, b) in enumerate(zip(r.token_ids, ref)) if a != b), len(ref))
            out["diffs"].append(f"{pol}@{first}")


def placement(device: str, dtype: str) -> dict:
    """Every module call of every policy's rounds (greedy and sampled) on the device, in the dtype."""
    from control import make_policy
    from nodes.models.loading import load_pair
    from nodes.speculative import speculative_generate
    from schemas.rounds import SamplingParams

    pair = load_pair(device=device, dtype=dtype)
    want_dev = torch.device(device if ":" in device or device == "cpu" else f"{device}:0")
    want_dt = getattr(torch, pair.dtype)
    wrong: set[str] = set()
    calls = [0]

    def check(where, t):
        if isinstance(t, torch.Tensor):
            if t.device != want_dev:
                wrong.add(f"{where}: {t.device}")
            elif t.is_floating_point() and t.dtype != want_dt:
                wrong.add(f"{where}: {t.dtype}")
        elif isinstance(t, (list, tuple)):
            for x in t:
                check(where, x)
        elif hasattr(t, "logits"):
            check(where, t.logits)

    def hook(module, args, res):
        calls[0] += 1
        name = type(module).__name__
        for pn, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if pn not in ("inv_freq", "original_inv_freq"):
                check(f"{name}.{pn}", p)
        check(f"{name} in", args)
        check(f"{name} out", res)

    prompt = list(pair.tokenizer.encode("The quick brown fox jumps over the lazy dog, and", add_special_tokens=False))
    errors, sampled = {}, {}
    h = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        for t in (0.0, 0.8):
            for pol in ["target-only"] + POLICIES:
                try:
                    r = speculative_generate(pair, prompt, 24, make_policy(pol), SamplingParams(t), seed=5)
                    if t:
                        sampled[pol] = len(r.token_ids)
                except Exception as e:
                    errors[f"{pol}@T={t}"] = str(e).splitlines()[0][:200]
    finally:
        h.remove()
    return {"dtype": pair.dtype, "module_calls": calls[0], "off_device_or_dtype": sorted(wrong)[:20],
            "errors": errors, "sampled_tokens": sampled}


def static_vs_eager_bundled(device: str, dtype: str) -> dict:
    """Bundled pair: verdicts of the static path (graphs on CUDA) vs eager over 6 steps of 12 sessions,
    timings of both at 1/8/32/64 sessions."""
    from nodes.models.loading import load_pair
    from pipeline.bench import verify as bv

    pair = load_pair(device=device, dtype=dtype, load_draft=False)
    rng = random.Random(0)
    flips = bv.verdict_flips(pair, bv._contexts(pair, 12, 100, 400, rng), 4, 6, rng)
    times = {}
    for b in (1, 8, 32, 64):
        ctx = bv._contexts(pair, b, 100, 400, rng)
        times[str(b)] = {"eager_ms": bv._slot_step(pair, ctx, 4, 10, False, rng)["step_ms"],
                         "fast_ms": bv._slot_step(pair, ctx, 4, 10, False, rng, graphs=True)["step_ms"]}
    return {"dtype": pair.dtype, "flips": flips, "step_ms": times}


def shape_bench(device: str, shape: str, layers: int | None, batches: tuple[int, ...], steps: int) -> dict:
    from pipeline.bench import verify as bv

    return bv.bench_verify_shape(shape, device=device, layers=layers, batches=batches, steps=steps,
                                 log=lambda m: print("   ", m, flush=True))


def shape_flips_and_prefill(device: str, shape: str, layers: int | None) -> dict:
    from nodes.models.prefill import measure_prefill
    from pipeline.bench import verify as bv

    pair = bv.shape_pair(shape, device, None, layers)
    cuda = device.startswith("cuda")
    rng = random.Random(2)
    out: dict = {"dtype": pair.dtype}
    out["flips_16_sessions_4_steps"] = bv.verdict_flips(pair, bv._contexts(pair, 16, 100, 400, rng), 4, 4, rng,
                                                        max_bytes=(48 << 30) if cuda else (2 << 30))
    m = measure_prefill(pair.target)
    out["prefill"] = m
    for chunk in (None, 256, m["chunk"]):
        key = f"stall_chunk_{chunk}"
        out[key] = bv._prefill_stall(pair, chunk, 8, 3000, 4, rng, max_bytes=(48 << 30) if cuda else (2 << 30))
    if cuda:
        out["invariant_cost"] = {}
        for b in (8, 32):
            ctx = bv._contexts(pair, b, 100, 400, rng)
            out["invariant_cost"][str(b)] = {
                "fast_ms": bv._slot_step(pair, ctx, 4, 6, False, rng, graphs=True, max_bytes=48 << 30)["step_ms"],
                "invariant_ms": bv._slot_step(pair, ctx, 4, 4, False, rng, graphs=True, batch_invariant=True,
                                              max_bytes=48 << 30)["step_ms"]}
    return out


def _with_verifier(verifier):
    """speculative_generate's verify step routed through `verifier` (a BatchVerifier): the in-process loop then
    verifies like the cloud does (slots, static path), so its greedy output can be compared with target-only."""
    from nodes.models.batch_verify import VerifyJob

    def verify_round(model, vocab_size, state, context, draft, params):
        if context is not None and state is not None:
            verifier.release(state)
        (res,), _ = verifier.run([VerifyJob(None if context is not None else state, context, draft, params)])
        if res.error is not None:
            raise res.error
        return res.state, res.verdict, res.prefill_ms

    return verify_round


def fast_loop_greedy(device: str, dtype: str, n: int, tokens: int) -> dict:
    """Every policy through the static (CUDA graph) verify path vs target-only on the per-request path."""
    import nodes.speculative as sp
    from nodes.models.batch_verify import BatchVerifier
    from nodes.models.loading import load_pair
    from pipeline.bench.engine import bench_prompts

    pair = load_pair(device=device, dtype=dtype)
    ver = BatchVerifier(pair.target, pair.vocab_size, max_slots=16, max_len=2048, graphs=True)
    out: dict = {"dtype": pair.dtype, "cases": 0, "equal": 0, "diffs": [], "errors": {}}
    original = sp.verify_round
    for p in bench_prompts(pair, n=n, chars=200):
        ref = sp.target_only_generate(pair, p, tokens).token_ids
        sp.verify_round = _with_verifier(ver)
        try:
            _every_policy(out, pair, p, tokens, sp.speculative_generate, ref)
        finally:
            sp.verify_round = original
    out["static_error"] = ver.static_error
    out["captures"] = ver.static.captures if ver.static else None
    return out


def fast_draft(device: str, dtype: str, n: int, tokens: int) -> dict:
    """The edge's batched draft step at static shapes: every policy through static drafting (slot draft
    sessions) and static verification vs target-only, greedy; then draft step times eager vs static."""
    import nodes.speculative as sp
    from nodes.models.batch_draft import DraftJob, DraftRows, SlotDraftSession
    from nodes.models.batch_verify import BatchVerifier
    from nodes.models.loading import load_pair
    from nodes.models.slots import SlotCache
    from pipeline.bench import verify as bv
    from pipeline.bench.engine import bench_prompts

    pair = load_pair(device=device, dtype=dtype)
    ver = BatchVerifier(pair.target, pair.vocab_size, max_slots=16, max_len=2048, graphs=True)
    dcache = SlotCache(pair.draft, max_slots=64, max_len=2048)
    out: dict = {"dtype": pair.dtype, "cases": 0, "equal": 0, "diffs": [], "errors": {}}
    orig_v, orig_d = sp.verify_round, sp.DraftSession
    for p in bench_prompts(pair, n=n, chars=200):
        ref = sp.target_only_generate(pair, p, tokens).token_ids
        sp.verify_round = _with_verifier(ver)
        sp.DraftSession = lambda model, ctx, vocab, params: SlotDraftSession(dcache, ctx, vocab, params)
        try:
            _every_policy(out, pair, p, tokens, sp.speculative_generate, ref)
        finally:
            sp.verify_round, sp.DraftSession = orig_v, orig_d
        for s in list(dcache.used):
            if s != getattr(getattr(dcache, "_static_runner", None), "scratch", -1):
                dcache.evict(s)
    out["static_error"] = getattr(dcache, "_static_error", None)
    rng = random.Random(3)
    times = {}
    for b in (1, 8, 32, 64):
        ctxs = bv._contexts(pair, b, 100, 400, rng)
        row = {}
        for graphs in (False, True):
            cache = SlotCache(pair.draft, max_slots=2 * b + 2, max_len=2048)
            sess = [SlotDraftSession(cache, c, pair.vocab_size) for c in ctxs]
            steps_ms = []
            for k in range(4):
                rows = DraftRows(cache, graphs=graphs)
                for i, s in enumerate(sess):
                    rows.add(DraftJob(s, 5, k), i)
                while rows:
                    rows.step()
                if k >= 1:
                    steps_ms.append(rows.stats.total_ms / max(1, rows.stats.steps))
                for s in sess:
                    s._crop_to(len(s.tokens) - 1)
                    s._last_draft = []
            row["static" if graphs else "eager"] = round(sorted(steps_ms)[len(steps_ms) // 2], 3)
        times[str(b)] = row
    out["draft_step_ms"] = times
    return out


def breakdown(device: str, shape: str, layers: int | None) -> dict:
    """Where a 7B step's time goes (eager vs fast: prep, forward, accept), eager with 1 vs default threads, and
    the fast step with transformers' GQA-in-SDPA forced (no repeat_kv copies), its verdicts vs eager."""
    from nodes.models.loading import set_threads
    from pipeline.bench import verify as bv

    pair = bv.shape_pair(shape, device, None, layers)
    mb = (48 << 30) if device.startswith("cuda") else (2 << 30)
    rng = random.Random(4)
    out: dict = {"threads": torch.get_num_threads()}
    for b in (1, 32, 64):
        ctx = bv._contexts(pair, b, 100, 400, rng)
        out[str(b)] = {"eager": bv._slot_step(pair, ctx, 4, 8, False, rng, max_bytes=mb),
                       "fast": bv._slot_step(pair, ctx, 4, 8, False, rng, graphs=True, max_bytes=mb)}
    set_threads(1)
    ctx = bv._contexts(pair, 8, 100, 400, rng)
    out["eager_8_one_thread"] = bv._slot_step(pair, ctx, 4, 8, False, rng, max_bytes=mb)
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"
    try:
        out["gqa_forced"] = {str(b): bv._slot_step(pair, bv._contexts(pair, b, 100, 400, rng), 4, 8, False, rng,
                                                   graphs=True, max_bytes=mb) for b in (1, 32, 64)}
        out["gqa_forced"]["flips"] = bv.verdict_flips(pair, bv._contexts(pair, 16, 100, 400, rng), 4, 3, rng,
                                                      max_bytes=mb)
    finally:
        os.environ.pop("TRANSFORMERS_SDPA_FORCE_GQA", None)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=os.environ.get("DEV", "cuda"))
    ap.add_argument("--shape", default="qwen2-7b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--only", default="", help="comma-separated part names to run (default: all)")
    a = ap.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    sys.path.insert(0, os.getcwd())
    import transformers

    cuda = a.device.startswith("cuda")
    RES.update({"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                "transformers": transformers.__version__, "args": vars(a)})
    save()
    batches = tuple(int(b) for b in a.batches.split(","))
    t0 = time.time()
    parts = [
        ("greedy_float32", greedy_per_policy, a.device, "float32", a.prompts, a.tokens, t0 + 60),
        ("greedy_bfloat16", greedy_per_policy, a.device, "bfloat16", a.prompts, a.tokens, t0 + 110),
        ("placement", placement, a.device, "bfloat16" if cuda else "bfloat16"),
        ("static_vs_eager_bundled", static_vs_eager_bundled, a.device, None),
        ("shape_bench", shape_bench, a.device, a.shape, a.layers, batches, a.steps),
        ("shape_flips_and_prefill", shape_flips_and_prefill, a.device, a.shape, a.layers),
        ("fast_loop_greedy_bfloat16", fast_loop_greedy, a.device, "bfloat16", a.prompts, a.tokens),
        ("fast_loop_greedy_float32", fast_loop_greedy, a.device, "float32", a.prompts, a.tokens),
        ("breakdown", breakdown, a.device, a.shape, a.layers),
        ("fast_draft_bfloat16", fast_draft, a.device, "bfloat16", a.prompts, a.tokens),
    ]
    only = {x for x in a.only.split(",") if x}
    for name, fn, *args in parts:
        if only and name not in only:
            continue
        part(name, fn, *args)
        if cuda:
            torch.cuda.empty_cache()
    RES["total_s"] = round(time.time() - t0, 1)
    save()
    print("done", flush=True)


if __name__ == "__main__":
    main()
