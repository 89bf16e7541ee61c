"""`specstop bench engine`: what the in-process engine costs and how well the pair agrees.

All numbers are medians or ratios from one run (these machines are shared and noisy).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from control import make_policy
from nodes.models.loading import ModelPair, load_pair, set_threads
from nodes.models.sessions import DraftSession, TargetSession
from nodes.models.train_pair import corpus_documents
from nodes.speculative import speculative_generate, target_only_generate

BANDS = ((0, 128), (128, 512), (512, 1024))


def bench_prompts(pair: ModelPair, n: int = 6, chars: int = 200) -> list[list[int]]:
    """Real text from the corpus: the opening of every k-th pydoc topic."""
    docs = corpus_documents()
    step = max(1, len(docs) // n)
    return [pair.tokenizer.encode(docs[i][:chars], add_special_tokens=False) for i in range(0, step * n, step)][:n]


def round_compute_ms(pair: ModelPair, context: list[int], length: int, rounds: int) -> float:
    """Median draft+verify time of one greedy round at this context length."""
    draft = DraftSession(pair.draft, context, pair.vocab_size)
    target = TargetSession(pair.target, context, pair.vocab_size)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        d = draft.propose(length)
        v = target.verify(d)
        draft.apply(v)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[1:] if len(times) > 2 else times)


def survival_by_band(pair: ModelPair, length: int = 8, prompts_per_band: int = 8, new_tokens: int = 64) -> dict:
    """S(i) = P(A >= i) from greedy rounds of fixed length 8, by context length at the round.

    Each band gets real-text prompts that start inside it (pydoc topics), so the
    contexts are documentation, not the loops a small model falls into late in a
    long greedy generation."""
    docs = sorted(corpus_documents(), key=len, reverse=True)
    counts = {b: [0] * (length + 1) for b in BANDS}
    for lo, hi in BANDS:
        start_len = lo + max(8, (hi - lo) // 4)
        for j in range(prompts_per_band):
            doc = docs[(j * 5 + lo) % len(docs)]
            prompt = pair.tokenizer.encode(doc, add_special_tokens=False)[:start_len]
            draft = DraftSession(pair.draft, prompt, pair.vocab_size)
            target = TargetSession(pair.target, prompt, pair.vocab_size)
            while len(target.tokens) < start_len + new_tokens:
                ctx = len(target.tokens)
                v = target.verify(draft.propose(length))
                draft.apply(v)
                band = next((b for b in BANDS if b[0] <= ctx < b[1]), None)
                if band is None:
                    break
                counts[band][0] += 1
                for i in range(1, v.accepted + 1):
                    counts[band][i] += 1
    return {f"{lo}-{hi}": {"rounds": c[0], "survival": [round(x / c[0], 4) for x in c[1:]] if c[0] else None}
            for (lo, hi), c in counts.items()}


def _tokens_per_s(fn, repeats: int) -> tuple[float, object]:
    rates, last = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        last = fn()
        rates.append(len(last.token_ids) / (time.perf_counter() - t0))
    return statistics.median(rates), last


def hf_assisted(pair: ModelPair, prompt: list[int], max_new: int):
    import torch

    x = torch.tensor([prompt])
    with torch.inference_mode():
        out = pair.target.generate(x, assistant_model=pair.draft, max_new_tokens=max_new, do_sample=False,
                                   pad_token_id=pair.tokenizer.pad_token_id)

    class R:  # same shape as GenerationResult for _tokens_per_s
        token_ids = out[0, len(prompt):].tolist()
    return R


def bench_engine(draft=None, target=None, threads: int = 2, repeats: int = 3, max_new_tokens: int = 128,
                 profile_out: str | None = None, device: str = "cpu", dtype: str | None = None) -> dict:
    set_threads(threads)
    pair = load_pair(draft, target, device=device, dtype=dtype)
    prompt = bench_prompts(pair, n=1, chars=120)[0]
    long_ctx = (prompt * (1000 // len(prompt) + 1))[:1000]
    short_ctx = prompt[:50]
    growth = {L: round_compute_ms(pair, long_ctx, L, 12) / round_compute_ms(pair, short_ctx, L, 12) for L in (1, 4)}

    base_rate, base = _tokens_per_s(lambda: target_only_generate(pair, prompt, max_new_tokens), repeats)
    spec = {}
    compute = {}
    for L in range(1, 9):
        rate, res = _tokens_per_s(lambda: speculative_generate(pair, prompt, max_new_tokens, make_policy(f"fixed:{L}")), repeats)
        assert res.token_ids == base.token_ids, f"fixed:{L} output differs from target-only"
        spec[str(L)] = round(rate, 1)
        compute[str(L)] = round((res.draft_ms + res.verify_ms) / res.rounds, 3)
    hf_rate, hf_res = _tokens_per_s(lambda: hf_assisted(pair, prompt, max_new_tokens), repeats)
    best_L = max(spec, key=spec.get)
    bands = survival_by_band(pair)
    overall = _overall_survival(bands)
    out = {
        "threads": threads,
        "context_growth_ratio": round(growth[4], 3),
        "context_growth_ratio_L1": round(growth[1], 3),
        "target_only_tokens_per_s": round(base_rate, 1),
        "speculative_tokens_per_s": spec,
        "best_fixed_length": int(best_L),
        "speedup_best_vs_target_only": round(spec[best_L] / base_rate, 3),
        "hf_assisted_tokens_per_s": round(hf_rate, 1),
        "ours_best_vs_hf_assisted": round(spec[best_L] / hf_rate, 3),
        "hf_assisted_matches_target_only": hf_res.token_ids[: len(base.token_ids)] == base.token_ids,
        "round_compute_ms": compute,
        "survival_by_context": bands,
        "survival_overall": overall,
    }
    if profile_out:
        prof = {"name": "bundled-pair", "round_compute_ms": compute, "survival": overall}
        Path(profile_out).write_text(json.dumps(prof, indent=1) + "\n")
        out["profile_written"] = profile_out
    return out


def _overall_survival(bands: dict) -> list[float]:
    total = sum(b["rounds"] for b in bands.values())
    k = len(next(b for b in bands.values() if b["survival"])["survival"])
    s = [sum(b["rounds"] * b["survival"][i] for b in bands.values() if b["survival"]) / total for i in range(k)]
    for i in range(1, k):  # enforce the non-increasing shape against rounding
        s[i] = min(s[i], s[i - 1])
    return [round(x, 4) for x in s]
