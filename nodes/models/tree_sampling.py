"""Exact acceptance over a draft tree: several candidate children per node (SpecInfer-style
recursive rejection), so a tree keeps the target's distribution like a chain does.

At a node the target's distribution is p and the candidates are x_1..x_k, candidate i drawn
from q_i independently of the others. Candidate i is accepted with min(1, p(x_i)/q_i(x_i));
on rejection p <- norm(max(p - q_i, 0)) and the next candidate is tried against that residual;
if all are rejected the node's token is drawn from the last residual. Each step is one
standard speculative-sampling step aimed at the current residual, so the emitted token is
distributed as p (by induction over the candidates). Both ways a tree is drafted fit:
iid draws from the draft's q (pass q k times), or the draft's top-k tokens chosen
deterministically (q_i = one-hot at x_i: accept with p(x_i), residual = p without x_i).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def one_hot(token: int, vocab: int) -> torch.Tensor:
    q = torch.zeros(vocab, dtype=torch.float32)
    q[token] = 1.0
    return q


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(p - q, 0)); p itself where nothing is left (p <= q everywhere means p == q,
    which accepts surely, so this fallback is only reached through rounding)."""
    r = torch.clamp(p - q, min=0.0)
    s = float(r.sum())
    return r / s if s > 0 else p


def accept_candidates(p: torch.Tensor, candidates: list[int], qs: list[torch.Tensor],
                      gen: torch.Generator) -> tuple[int, int]:
    """(index of the accepted candidate, or -1 if none; the token emitted at this node)."""
    if len(candidates) != len(qs):
        raise ValueError(f"tree sampling: {len(candidates)} candidates but {len(qs)} draft distributions")
    p = p.float()
    for i, (x, q) in enumerate(zip(candidates, qs)):
        qx = float(q[x])
        if qx <= 0:
            raise ValueError(f"tree sampling: candidate {i} (token {x}) has draft probability 0")
        u = float(torch.rand((), generator=gen))
        if u < min(1.0, float(p[x]) / qx):
            return i, x
        p = residual(p, q)
    return -1, int(torch.multinomial(p, 1, generator=gen))


def greedy_child(target_argmax: int, candidates: list[int]) -> int:
    """Greedy acceptance at a node: the child whose token is the target's argmax, or -1."""
    for i, x in enumerate(candidates):
        if x == target_argmax:
            return i
    return -1


@dataclass
class TreeWalk:
    """`path`: accepted node indices from the root down; `tokens`: the emitted tokens (the accepted
    drafts, then the target's own token at the first node where no child was accepted)."""

    path: list[int]
    tokens: list[int]


def walk(children: list[list[int]], tokens: list[int], p: torch.Tensor, qs: list[torch.Tensor] | None,
         gen: torch.Generator | None) -> TreeWalk:
    """Walk a verified tree from the root. Nodes are 0..n (0 = the root, the last accepted token);
    `children[v]`: v's children in rank order; `tokens[v]`: node v's token; `p[v]`: the target's
    distribution after node v (or its logits' argmax is used when `qs` is None: greedy);
    `qs[c]`: the distribution node c was drafted from."""
    v, path, out = 0, [], []
    while True:
        kids = children[v]
        cand = [tokens[c] for c in kids]
        if qs is None:
            i = greedy_child(int(torch.argmax(p[v])), cand)
            x = cand[i] if i >= 0 else int(torch.argmax(p[v]))
        else:
            i, x = accept_candidates(p[v], cand, [qs[c] for c in kids], gen)
        out.append(x)
        if i < 0:
            return TreeWalk(path, out)
        v = kids[i]
        path.append(v)
