"""Token-level math of lossless speculative decoding (Leviathan et al. 2023).

Pure functions on tensors, so the accept/residual/bonus rules are testable on
hand-built distributions without any model.
"""
from __future__ import annotations

import torch

from schemas.rounds import SamplingParams


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution target-only sampling draws from: temperature, then top-p."""
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, idx = torch.sort(probs, dim=-1, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < params.top_p  # always keeps the top token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def draft_distribution(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k-truncated, renormalised draft distribution: (ids, probs), both length k, on the host (the round's
    generator is a CPU one, and the draft ships them anyway): one device sync per drafted token."""
    k = min(params.top_k, logits.shape[-1])
    vals, ids = torch.topk(logits.float() / params.temperature, k)
    return ids.cpu(), torch.softmax(vals.cpu(), dim=-1)


def sample_sparse(ids: torch.Tensor, probs: torch.Tensor, gen: torch.Generator) -> tuple[int, float]:
    j = int(torch.multinomial(probs, 1, generator=gen))
    return int(ids[j]), float(probs[j])


def dense_q(q_ids: list[int], q_probs: list[float], vocab: int) -> torch.Tensor:
    q = torch.zeros(vocab, dtype=torch.float32)
    q[torch.tensor(q_ids, dtype=torch.long)] = torch.tensor(q_probs, dtype=torch.float32)
    return q


def accept_greedy(target_argmax: list[int], draft_tokens: list[int]) -> tuple[int, int]:
    """Accept while the target's argmax equals the draft; the next token is the target's."""
    a = 0
    while a < len(draft_tokens) and draft_tokens[a] == target_argmax[a]:
        a += 1
    return a, target_argmax[a]


def accept_sampled(
    p: torch.Tensor,
    draft_tokens: list[int],
    q_ids: list[list[int]],
    q_probs: list[list[float]],
    gen: torch.Generator,
) -> tuple[int, int]:
    """Speculative sampling. `p` is [L+1, V]: the target's distribution at each draft
    position plus the bonus position. Accept x_i with prob min(1, p(x_i)/q(x_i)); on the
    first rejection sample from max(p - q, 0) renormalised; if all accepted, sample from p.

    Vectorized on p's device with one host sync: the L + 1 uniforms come from the round's (CPU)
    generator up front, every position's acceptance and residual are computed at once, and the
    next token is drawn by inverse CDF from the row the first rejection picks (the bonus row when
    none). The same law as the sequential rule, position by position."""
    n = len(draft_tokens)
    dev = p.device
    u = torch.rand(n + 1, generator=gen, dtype=torch.float64)
    if n:
        width = max(len(ids) for ids in q_ids[:n])
        qi = torch.zeros(n, width, dtype=torch.long)
        qp = torch.zeros(n, width, dtype=torch.float32)
        for i in range(n):  # padded entries carry probability 0
            qi[i, : len(q_ids[i])] = torch.tensor(q_ids[i], dtype=torch.long)
            qp[i, : len(q_probs[i])] = torch.tensor(q_probs[i], dtype=torch.float32)
        q = torch.zeros(n, p.shape[-1], dtype=p.dtype, device=dev).scatter_add_(1, qi.to(dev), qp.to(dev, p.dtype))
        x = torch.tensor(draft_tokens, dtype=torch.long, device=dev)
        rows = torch.arange(n, device=dev)
        px, qx = p[rows, x], q[rows, x]
        ok = (qx > 0) & (u[:n].to(dev, p.dtype) * qx < px)  # u < p/q without dividing
        accepted = torch.cumprod(ok.long(), 0).sum()
        dists = torch.cat([torch.clamp(p[:n] - q, min=0.0), p[n:n + 1]])  # residual rows, then the bonus row
        d = dists[accepted]
        total = d.sum()
        d = torch.where(total > 0, d, p[accepted])  # p == q up to rounding: any sample from p is exact
    else:
        accepted = torch.zeros((), dtype=torch.long, device=dev)
        d = p[0]
    cdf = torch.cumsum(d, 0)
    tok = torch.searchsorted(cdf, (u[n].to(dev, cdf.dtype) * cdf[-1]).reshape(1), right=True).clamp_(max=len(d) - 1)
    a, t = torch.stack([accepted, tok[0]]).tolist()  # the one host sync
    return a, t


def accept_sampled_sequential(
    p: torch.Tensor,
    draft_tokens: list[int],
    q_ids: list[list[int]],
    q_probs: list[list[float]],
    gen: torch.Generator,
) -> tuple[int, int]:
    """The rule position by position (a dense q and a host sync per position): the reference the
    vectorized `accept_sampled` is checked against."""
    vocab = p.shape[-1]
    for i, x in enumerate(draft_tokens):
        q = dense_q(q_ids[i], q_probs[i], vocab)
        px, qx = float(p[i, x]), float(q[x])
        u = float(torch.rand((), generator=gen))
        if qx > 0 and u * qx < px:
            continue
        residual = torch.clamp(p[i] - q, min=0.0)
        total = float(residual.sum())
        if total <= 0.0:
            residual, total = p[i], float(p[i].sum())
        return i, int(torch.multinomial(residual / total, 1, generator=gen))
    return len(draft_tokens), int(torch.multinomial(p[len(draft_tokens)], 1, generator=gen))


def round_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """Independent draft and target random streams derived from one round seed."""
    draft = torch.Generator().manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
    target = torch.Generator().manual_seed((seed * 6364136223846793005 + 1442695040888963407) & 0x7FFF_FFFF_FFFF_FFFF)
    return draft, target
