"""`specstop bench verify`: one verify step for B sessions, batched on the slot cache vs the
per-request path (one DynamicCache forward per session), and what the slot bookkeeping costs.

Each session holds a real-text context (mixed lengths) and verifies a fixed-length draft of
random tokens every step, so nearly every step rolls back (the common case). Medians over
`steps` after a warm-up; these machines are shared and noisy, so read ratios, not digits.

With `--shape qwen2-7b|llama3-8b|tiny` the target is a random-weight model of that shape (a config
written here, no hub), and each batch size also reports the static-shape step (`fast`: CUDA graphs on
a GPU), a bare eager forward of B x (L+1) tokens with no cache, the same forward replayed as a CUDA
graph, and the memory floor (weight bytes / measured bandwidth): the gap to what the hardware allows.
"""
from __future__ import annotations

import random
import statistics
import time
from typing import Callable

from nodes.models.batch_verify import BatchVerifier, VerifyJob
from nodes.models.loading import ModelPair, load_pair, set_threads
from nodes.models.sessions import TargetSession
from nodes.models.slots import SlotCache
from nodes.models.train_pair import corpus_documents
from schemas.rounds import Draft, SamplingParams


def _contexts(pair: ModelPair, n: int, lo: int, hi: int, rng: random.Random) -> list[list[int]]:
    docs = corpus_documents()
    out = []
    for i in range(n):
        ids = pair.tokenizer.encode(" ".join(docs[i % len(docs):i % len(docs) + 8]), add_special_tokens=False)
        out.append(ids[: rng.randint(lo, hi)])
    return out


def _median(fn: Callable[[], float], steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(fn() for _ in range(steps))


def _slot_step(pair: ModelPair, contexts: list[list[int]], length: int, steps: int, scattered: bool,
               rng: random.Random, graphs: bool = False, batch_invariant: bool = False,
               max_bytes: int = 2 << 30) -> dict:
    """Batched verify over the sessions' slots: consecutive slots, or every other one (gathered)."""
    verifier = BatchVerifier(pair.target, pair.vocab_size, max_slots=4 * len(contexts) + 1, max_len=4096,
                             graphs=graphs, batch_invariant=batch_invariant, max_bytes=max_bytes)
    params = SamplingParams()
    spacers = []
    states = []
    for ctx in contexts:
        (res,), _ = verifier.run([VerifyJob(None, ctx, Draft([]), params)])
        states.append(res.state)
        if scattered:  # a held slot between every two: the batch's slots are not one range
            (gap,), _ = verifier.run([VerifyJob(None, ctx[:8], Draft([]), params)])
            spacers.append(gap.state)
    last = {}

    def step() -> float:
        jobs = [VerifyJob(s, None, Draft([rng.randrange(256) for _ in range(length)]), params) for s in states]
        t0 = time.perf_counter()
        results, stats = verifier.run(jobs)
        ms = (time.perf_counter() - t0) * 1e3
        assert stats.failed == 0 and stats.slot_rows == len(jobs), [r.error for r in results][:2]
        last.setdefault("runs", []).append(stats)
        return ms

    total = _median(step, steps)
    runs = last["runs"][2:]
    why = {"static_error": verifier.static_error} if verifier.static_error else {}
    med = lambda f: round(statistics.median(f(s) for s in runs), 3)  # noqa: E731
    return {"step_ms": round(total, 3), "forward_ms": med(lambda s: s.forward_ms), "prep_ms": med(lambda s: s.prep_ms),
            "kv_ms": med(lambda s: s.kv_ms), "accept_ms": med(lambda s: s.accept_ms),
            "bookkeeping_ms": med(lambda s: s.prep_ms + s.kv_ms),
            "padded_tokens": runs[-1].padded_tokens, "real_tokens": runs[-1].real_tokens,
            "static": runs[-1].static, "forwards": runs[-1].forwards, **why}


def _per_request_step(pair: ModelPair, contexts: list[list[int]], length: int, steps: int,
                      rng: random.Random) -> dict:
    sessions = [TargetSession(pair.target, ctx, pair.vocab_size) for ctx in contexts]

    def step() -> float:
        drafts = [Draft([rng.randrange(256) for _ in range(length)]) for _ in sessions]
        t0 = time.perf_counter()
        for s, d in zip(sessions, drafts):
            s.verify(d)
        return (time.perf_counter() - t0) * 1e3

    return {"step_ms": round(_median(step, steps), 3)}


def _bookkeeping_us(pair: ModelPair, n: int = 2000) -> dict:
    """Admit + evict and crop of one slot, alone (no forward), in microseconds."""
    cache = SlotCache(pair.target, max_slots=64, max_len=1024, slots=64)
    held = [cache.admit() for _ in range(32)]
    t0 = time.perf_counter()
    for _ in range(n):
        cache.evict(cache.admit())
    admit_evict = (time.perf_counter() - t0) / n * 1e6
    cache.forward([held[0]], [[1] * 64], [0])
    cache.crop(held[0], 63)
    t0 = time.perf_counter()
    for _ in range(n):
        cache.crop(held[0], 63)  # the same checks and write as any rollback
    crop = (time.perf_counter() - t0) / n * 1e6
    return {"admit_evict_us": round(admit_evict, 2), "crop_us": round(crop, 2), "grows": cache.grows}


def _prefill_stall(pair: ModelPair, chunk: int | None, others: int, prompt: int, length: int,
                   rng: random.Random, max_bytes: int = 2 << 30) -> dict:
    """`others` sessions verify a round every batch while one `prompt`-token context arrives: how long
    their batches take while it is prefilled (whole in one batch, or `chunk` tokens a batch)."""
    verifier = BatchVerifier(pair.target, pair.vocab_size, max_slots=others + 4, max_len=prompt + 64,
                             prefill_chunk=chunk, max_bytes=max_bytes)
    params = SamplingParams()
    states = [r.state for r in verifier.run([VerifyJob(None, c, Draft([]), params)
                                             for c in _contexts(pair, others, 100, 200, rng)])[0]]
    draft = lambda: Draft([rng.randrange(256) for _ in range(length)])  # noqa: E731

    def batch(extra: list[VerifyJob]) -> tuple[float, list]:
        jobs = extra + [VerifyJob(s, None, draft(), params) for s in states]
        t0 = time.perf_counter()
        results, _ = verifier.run(jobs)
        return (time.perf_counter() - t0) * 1e3, results

    quiet = statistics.median(batch([])[0] for _ in range(5))
    ids = pair.tokenizer.encode(" ".join(corpus_documents()[:40]), add_special_tokens=False)
    long_job = VerifyJob(None, (ids * (prompt // max(1, len(ids)) + 1))[:prompt], draft(), params)
    times = []
    while True:
        ms, results = batch([long_job])
        times.append(ms)
        if not results[0].again:
            break
    return {"prefill_chunk": chunk, "batches_while_prefilling": len(times),
            "longest_batch_ms": round(max(times), 2), "median_batch_ms": round(statistics.median(times), 2),
            "quiet_batch_ms": round(quiet, 2), "stall_ms": round(max(times) - quiet, 2),
            "prompt_ready_after_ms": round(sum(times), 2)}


def bench_verify(draft=None, target=None, device: str = "cpu", threads: int = 1, batches: tuple[int, ...] = (1, 8, 32),
                 length: int = 4, context: tuple[int, int] = (100, 400), steps: int = 10, seed: int = 0,
                 dtype: str | None = None) -> dict:
    set_threads(threads)
    pair = load_pair(draft, target, device=device, dtype=dtype, load_draft=False)
    rng = random.Random(seed)
    out: dict = {"threads": threads, "draft_length": length, "context_tokens": list(context), "steps": steps,
                 "batches": {}}
    for b in batches:
        contexts = _contexts(pair, b, *context, rng)
        per_request = _per_request_step(pair, contexts, length, steps, rng)
        slots = _slot_step(pair, contexts, length, steps, False, rng)
        row = {"per_request": per_request, "slots": slots,
               "per_request_ms_per_session": round(per_request["step_ms"] / b, 3),
               "slots_ms_per_session": round(slots["step_ms"] / b, 3),
               "speedup": round(per_request["step_ms"] / slots["step_ms"], 2)}
        if b > 1:
            row["slots_scattered"] = _slot_step(pair, contexts, length, steps, True, rng)
        out["batches"][str(b)] = row
    out["bookkeeping"] = _bookkeeping_us(pair)
    whole = _prefill_stall(pair, None, 8, 3000, length, rng)
    chunked = _prefill_stall(pair, 256, 8, 3000, length, rng)
    out["prefill_stall"] = {"others": 8, "prompt_tokens": 3000, "whole": whole, "chunked": chunked,
                            "stall_ratio_whole_vs_chunked": round(whole["stall_ms"] / max(chunked["stall_ms"], 1e-3), 2)}
    return out


# --- model shapes with random weights (no hub) -------------------------------------------------------
SHAPES = {
    "qwen2-7b": ("Qwen2Config", dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                                     num_key_value_heads=4, intermediate_size=18944, vocab_size=152064)),
    "llama3-8b": ("LlamaConfig", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                      num_key_value_heads=8, intermediate_size=14336, vocab_size=128256)),
    "tiny": ("Qwen2Config", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=256, vocab_size=512)),
}


def shape_pair(shape: str, device: str = "cpu", dtype: str | None = None, layers: int | None = None,
               seed: int = 0) -> ModelPair:
    """A target of `shape` with random weights (built on `device` directly) and the bundled tokenizer: contexts
    and drafts use its ids, logits are sliced to them; every layer, the full vocabulary head included, runs."""
    import torch
    import transformers

    from nodes.models.loading import BUNDLED_TARGET, load_tokenizer, resolve_dtype

    if shape not in SHAPES:
        raise ValueError(f"unknown shape '{shape}' (known: {', '.join(SHAPES)})")
    cls, kw = SHAPES[shape]
    kw = {**kw, **({"num_hidden_layers": layers} if layers else {})}
    tok = load_tokenizer(BUNDLED_TARGET)
    cfg = getattr(transformers, cls)(**kw, max_position_embeddings=32768, tie_word_embeddings=False,
                                     pad_token_id=0, eos_token_id=None, bos_token_id=None)
    cfg._attn_implementation = "sdpa"
    dtype = resolve_dtype(device, dtype)
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    return ModelPair(None, model.eval(), tok, len(tok), frozenset(), "none", f"{shape}-random", device, dtype)


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bandwidth_gbs(device: str, mb: int = 1024) -> float:
    """Device memory bandwidth from a big copy (read + write), GB/s."""
    import torch

    n = (mb << 20) // 4
    x = torch.empty(n, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    ts = []
    for _ in range(6):
        _sync(device)
        t0 = time.perf_counter()
        y.copy_(x)
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return round(2 * n * 4 / statistics.median(ts[1:]) / 1e9, 1)


def _bare_forward(pair: ModelPair, b: int, q: int, steps: int, graph: bool) -> float | str:
    """One forward of b x q tokens with no cache, eager or replayed as a CUDA graph (ms, median)."""
    import torch

    m, dev = pair.target, pair.device
    x = torch.randint(0, pair.vocab_size, (b, q), device=dev)
    with torch.inference_mode():
        f = lambda: m(input_ids=x, use_cache=False).logits  # noqa: E731
        if graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    f()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                f()
            f = g.replay
        for _ in range(2):
            f()
        ts = []
        for _ in range(steps):
            _sync(dev)
            t0 = time.perf_counter()
            f()
            _sync(dev)
            ts.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(ts), 3)


def verdict_flips(pair: ModelPair, contexts: list[list[int]], length: int, steps: int, rng: random.Random,
                  max_bytes: int = 2 << 30) -> dict:
    """The same greedy drafts verified four ways, step by step: eager batched, static (fast) batched,
    batch-invariant (one forward per session, static) and per request; counts of verdicts that differ from
    the eager batched one. Sessions apply their own verdicts, so after a flip their contexts differ."""
    params = SamplingParams()
    kinds = {"eager": dict(graphs=False), "fast": dict(graphs=True),
             "invariant": dict(graphs=True, batch_invariant=True)}
    vers = {k: BatchVerifier(pair.target, pair.vocab_size, max_slots=len(contexts) + 2, max_len=4096,
                             max_bytes=max_bytes, **kw) for k, kw in kinds.items()}
    states = {k: [r.state for r in v.run([VerifyJob(None, c, Draft([]), params) for c in contexts])[0]]
              for k, v in vers.items()}
    per_req = [TargetSession(pair.target, c, pair.vocab_size, params) for c in contexts]
    for s in per_req:
        s.verify(Draft([]))
    flips = {"fast": 0, "invariant": 0, "per_request": 0}
    total = 0
    for _ in range(steps):
        drafts = [Draft([rng.randrange(pair.vocab_size) for _ in range(length)]) for _ in contexts]
        got = {k: [(r.verdict.accepted, r.verdict.next_token) for r in
                   v.run([VerifyJob(s, None, d, params) for s, d in zip(states[k], drafts)])[0]]
               for k, v in vers.items()}
        got["per_request"] = [(v.accepted, v.next_token) for v in (s.verify(d) for s, d in zip(per_req, drafts))]
        total += len(contexts)
        for k in flips:
            flips[k] += sum(a != b for a, b in zip(got[k], got["eager"]))
    return {"verdicts": total, "differ_from_eager_batched": flips}


def bench_verify_shape(shape: str, device: str = "cpu", dtype: str | None = None, layers: int | None = None,
                       threads: int = 1, batches: tuple[int, ...] = (1, 8, 32, 64), length: int = 4,
                       context: tuple[int, int] = (100, 400), steps: int = 10, seed: int = 0,
                       bandwidth: float | None = None, per_request_max: int = 64, log=None) -> dict:
    """Per batch size: the eager slot step, the fast (static / CUDA graph) step, the per-request path, a bare
    forward eager and graph-replayed, the memory floor; ratios of the steps to the graph forward."""
    import torch

    set_threads(threads)
    t0 = time.perf_counter()
    pair = shape_pair(shape, device, dtype, layers, seed)
    cuda = str(device).startswith("cuda")
    max_bytes = (48 << 30) if cuda else (2 << 30)
    nbytes = sum(p.numel() * p.element_size() for p in pair.target.parameters())
    bw = bandwidth or bandwidth_gbs(device, 1024 if cuda else 256)
    rng = random.Random(seed)
    out: dict = {"shape": shape, "device": str(device), "dtype": pair.dtype,
                 "layers": pair.target.config.num_hidden_layers, "weight_gb": round(nbytes / 1e9, 3),
                 "bandwidth_gbs": bw, "bandwidth_measured": bandwidth is None,
                 "floor_ms": round(nbytes / (bw * 1e9) * 1e3, 3), "draft_length": length,
                 "context_tokens": list(context),
                 "steps": steps, "load_s": round(time.perf_counter() - t0, 1), "batches": {}}
    if not cuda:
        out["graph_forward_skipped"] = "CUDA graphs need a CUDA device"
    for b in batches:
        contexts = _contexts(pair, b, *context, rng)
        row: dict = {}
        row["eager_step_ms"] = _slot_step(pair, contexts, length, steps, False, rng, max_bytes=max_bytes)["step_ms"]
        fast = _slot_step(pair, contexts, length, steps, False, rng, graphs=True, max_bytes=max_bytes)
        row["fast_step_ms"] = fast["step_ms"]
        row["fast_static"] = fast["static"]
        if "static_error" in fast:
            row["fast_static_error"] = fast["static_error"]
        if b <= per_request_max:
            row["per_request_ms"] = _per_request_step(pair, contexts, length, max(2, steps // 3), rng)["step_ms"]
        row["bare_forward_ms"] = _bare_forward(pair, b, length + 1, steps, graph=False)
        if cuda:
            try:
                row["graph_forward_ms"] = _bare_forward(pair, b, length + 1, steps, graph=True)
            except Exception as exc:  # recorded, the rest still runs
                row["graph_forward_ms"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        ref = row.get("graph_forward_ms")
        ref = ref if isinstance(ref, float) else row["bare_forward_ms"]
        row["ratio_reference"] = "graph_forward_ms" if cuda and isinstance(row.get("graph_forward_ms"), float) \
            else "bare_forward_ms"
        row["eager_step_over_forward"] = round(row["eager_step_ms"] / ref, 2)
        row["fast_step_over_forward"] = round(row["fast_step_ms"] / ref, 2)
        if "per_request_ms" in row:
            row["per_request_over_fast"] = round(row["per_request_ms"] / row["fast_step_ms"], 2)
        row["fast_step_over_floor"] = round(row["fast_step_ms"] / out["floor_ms"], 2)
        out["batches"][str(b)] = row
        if log:
            log(f"batch {b}: {row}")
    if cuda:
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return out
