"""Draft a tree with the draft model and verify it with one target forward (tree attention).

Both models keep a DynamicCache over every context token but the last (`pending`), as the
chain sessions do. A tree block is fed as one flat sequence: each node attends to the cached
prefix and to its ancestors (4-D mask), at position = prefix length + depth, so its logits
are exactly those a chain along its path would get. After the walk the target's cache keeps
only the accepted path (the other nodes' KV rows are dropped), so the next round sees the
same cache a chain would have left.

Shapes are control.trees.Tree: a node's children are the draft's top-c tokens there, in rank
order, drafted one batched forward per depth. The children are chosen deterministically, so in
sampled mode each candidate's draft distribution is a one-hot (tree_sampling says why that is
exact).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from control.trees import Tree
from nodes.models.errors import ModelError
from nodes.models.sampling import round_generators, target_probs
from nodes.models.sessions import _cache_kwarg
from nodes.models.tree_sampling import one_hot, walk
from nodes.protocol.tree import feed_parents
from schemas.rounds import Draft, SamplingParams, Verdict


class TreeCache:
    """A model's DynamicCache over `tokens[:-1]`, fed tree blocks with an ancestor mask."""

    def __init__(self, model, context: list[int], vocab_size: int):
        if not context:
            raise ModelError("context is empty: a tree session needs at least one token")
        self.model, self.vocab_size = model, vocab_size
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.eager = getattr(model.config, "_attn_implementation", "sdpa") == "eager"
        self.cache = DynamicCache()
        self.tokens = list(context)
        self.forwards = 0
        self._prefix = 0  # cache rows every node of the tree being drafted sees (set per round)
        if len(context) > 1:
            self.feed(context[:-1], [i - 1 for i in range(len(context) - 1)], [i for i in range(len(context) - 1)])

    @property
    def cached_len(self) -> int:
        return self.cache.get_seq_length()

    @torch.inference_mode()
    def feed(self, ids: list[int], parents: list[int], positions: list[int],
             ancestors_in_cache: list[list[int]] | None = None) -> torch.Tensor:
        """Feed a block; `parents[i]` indexes into the block (-1 = none), `positions[i]` is node i's
        position id (prefix length + depth). Without `ancestors_in_cache` every cached row is visible;
        with it, only the rows before `_prefix` plus `ancestors_in_cache[i]` (earlier-fed tree nodes).
        Returns logits [n, vocab]."""
        start = self.cached_len
        prefix = start if ancestors_in_cache is None else self._prefix
        n = len(ids)
        allowed = torch.zeros(n, start + n, dtype=torch.bool)
        allowed[:, :prefix] = True
        for i in range(n):
            if ancestors_in_cache is not None:
                allowed[i, ancestors_in_cache[i]] = True
            j = i
            while j >= 0:
                allowed[i, start + j] = True
                j = parents[j]
        mask = allowed[None, None]
        if self.eager:
            mask = torch.zeros(mask.shape, dtype=self.dtype).masked_fill(~mask, torch.finfo(self.dtype).min)
        self.forwards += 1
        out = self.model(input_ids=torch.tensor([ids], device=self.device), attention_mask=mask.to(self.device),
                         position_ids=torch.tensor([positions], device=self.device), use_cache=True,
                         **{_cache_kwarg(self.model): self.cache})
        return out.logits[0, :, : self.vocab_size].float()

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only these cache rows (in order): the compaction after a tree round."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(-2, idx)
            layer.values = layer.values.index_select(-2, idx)

    def crop(self, length: int) -> None:
        drop = self.cached_len - length
        if drop > 0:
            self.cache.crop(-drop)


@dataclass
class TreeRound:
    """`path`: the accepted nodes, 0-based indices into the round's tree, root's child first (what
    an online shape learner reads the accepted depth and rank from)."""

    emitted: list[int]
    accepted: int
    nodes: int
    draft_ms: float
    verify_ms: float
    path: list[int] = field(default_factory=list)


def _children(tree: Tree) -> list[list[int]]:
    """Children lists over 0..n, 0 = the root, node i of the tree = i + 1."""
    kids: list[list[int]] = [[] for _ in range(tree.nodes + 1)]
    for i, p in enumerate(tree.parents):
        kids[p + 1].append(i + 1)
    return kids


def draft_tree(draft: TreeCache, tree: Tree) -> list[int]:
    """Tokens of nodes 0..n (0 = the pending token): node v's children are the draft's top-c at v,
    one batched forward per depth over the nodes that have children. The draft cache is left
    holding the fed nodes; the caller crops it back."""
    kids = _children(tree)
    parent = [-1] + [p + 1 for p in tree.parents]
    depth = [0] + tree.depths()
    tokens = [draft.tokens[-1]] + [0] * tree.nodes
    prefix = draft.cached_len
    draft._prefix = prefix
    row: dict[int, int] = {}  # node -> its cache row, once fed
    frontier = [0] if kids[0] else []
    while frontier:
        anc = []
        for v in frontier:
            a, u = [], parent[v]
            while u >= 0:
                a.append(row[u])
                u = parent[u]
            anc.append(a)
        base = draft.cached_len
        logits = draft.feed([tokens[v] for v in frontier], [-1] * len(frontier),
                            [prefix + depth[v] for v in frontier], anc)
        for j, v in enumerate(frontier):
            row[v] = base + j
            top = torch.topk(logits[j], len(kids[v])).indices.tolist()
            for c, t in zip(kids[v], top):
                tokens[c] = t
        frontier = [c for v in frontier for c in kids[v] if kids[c]]
    return tokens


def accept_tree(logits: torch.Tensor, tokens: list[int], parents: list[int], params: SamplingParams,
                seed: int, vocab_size: int) -> tuple[list[int], list[int]]:
    """The verdict on a tree from the target's logits after the root and after each node ([n+1, vocab]):
    (accepted node path over 0..n-1, emitted tokens). `tokens`/`parents` are the n nodes (parent -1 =
    the root). The one tree acceptance rule of the in-process and the slot-cache paths."""
    kids: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, p in enumerate(parents):
        kids[p + 1].append(i + 1)
    all_tokens = [-1] + list(tokens)
    if params.greedy:
        w = walk(kids, all_tokens, logits, None, None)
    else:
        _, gen = round_generators(seed)
        p = target_probs(logits, params)
        w = walk(kids, all_tokens, p, [None] + [one_hot(t, vocab_size) for t in tokens], gen)
    return [v - 1 for v in w.path], w.tokens


@torch.inference_mode()
def verify_tree_session(session, draft: Draft) -> Verdict:
    """A tree round on a per-request TargetSession (the verifier's path when no slot is free): one
    forward of pending + the tree with the ancestor mask, the walk, then the cache keeps pending and
    the accepted path (the session's invariant: it covers every token but the new pending one)."""
    t0 = time.perf_counter()
    assert draft.parents is not None
    start, k = session.cached_len, len(session.pending)
    feed = list(session.pending) + list(draft.tokens)
    tree = feed_parents(draft.parents, k)
    n = len(feed)
    allowed = torch.zeros(n, start + n, dtype=torch.bool)
    allowed[:, :start] = True
    depth: list[int] = []
    for j, p in enumerate(tree):
        depth.append(0 if p < 0 else depth[p] + 1)
        a = j
        while a >= 0:
            allowed[j, start + a] = True
            a = tree[a]
    mask = allowed[None, None]
    model = session.model
    dtype = next(model.parameters()).dtype
    if getattr(model.config, "_attn_implementation", "sdpa") == "eager":
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    dev = session.device
    out = model(input_ids=torch.tensor([feed], device=dev), attention_mask=mask.to(dev),
                position_ids=torch.tensor([[start + d for d in depth]], device=dev), use_cache=True,
                **{_cache_kwarg(model): session.cache})
    logits = out.logits[0, k - 1:, : session.vocab_size].float()
    path, emitted = accept_tree(logits, list(draft.tokens), draft.parents, session.params, draft.seed,
                                session.vocab_size)
    idx = torch.tensor(list(range(start + k)) + [start + k + v for v in path], dtype=torch.long, device=dev)
    for layer in session.cache.layers:
        layer.keys = layer.keys.index_select(-2, idx)
        layer.values = layer.values.index_select(-2, idx)
    session.tokens.extend(emitted)
    session.pending = [emitted[-1]]
    return Verdict(len(path), emitted[-1], (time.perf_counter() - t0) * 1e3, path)


def verify_tree(target: TreeCache, tree: Tree, tokens: list[int], params: SamplingParams,
                seed: int) -> tuple[list[int], list[int]]:
    """One target forward over the whole tree, the walk, then compaction to the accepted path.
    Returns (emitted tokens, accepted node path)."""
    kids = _children(tree)
    parents = [-1] + [p + 1 for p in tree.parents]
    prefix = target.cached_len
    logits = target.feed(tokens, parents, [prefix + d for d in [0] + tree.depths()])
    if params.greedy:
        w = walk(kids, tokens, logits, None, None)
    else:
        _, gen = round_generators(seed)
        p = target_probs(logits, params)
        w = walk(kids, tokens, p, [one_hot(t, target.vocab_size) for t in tokens], gen)
    target.keep_rows(list(range(prefix + 1)) + [prefix + v for v in w.path])
    target.tokens.extend(w.tokens)
    return w.tokens, w.path


@dataclass
class TreeGeneration:
    tokens: list[int]
    rounds: list[TreeRound] = field(default_factory=list)

    @property
    def target_forwards(self) -> int:
        return len(self.rounds)


def tree_generate(draft_model, target_model, vocab_size: int, prompt: list[int], max_new: int,
                  tree: Tree | Callable[[], Tree], params: SamplingParams = SamplingParams(), seed: int = 0,
                  on_round: Callable[[Tree, TreeRound], None] | None = None) -> TreeGeneration:
    """Generate `max_new` tokens, one draft tree and one target forward per round. `tree` may be a
    callable asked for each round's shape (an online shape controller), told the round through
    `on_round`."""
    draft = TreeCache(draft_model, prompt, vocab_size)
    target = TreeCache(target_model, prompt, vocab_size)
    out = TreeGeneration([])
    shape = tree
    r = 0
    while len(out.tokens) < max_new:
        tree = shape() if callable(shape) else shape
        t0 = time.perf_counter()
        before = draft.cached_len
        tokens = draft_tree(draft, tree) if tree.nodes else [draft.tokens[-1]]
        t1 = time.perf_counter()
        emitted, path = verify_tree(target, tree, tokens, params, seed * 1_000_003 + r)
        t2 = time.perf_counter()
        # the draft re-feeds the pending token and the accepted path next round
        draft.crop(before)
        feed = [draft.tokens[-1]] + emitted[:-1]
        if feed:
            draft.feed(feed, [i - 1 for i in range(len(feed))], [before + i for i in range(len(feed))])
        draft.tokens.extend(emitted)
        out.tokens.extend(emitted)
        out.rounds.append(TreeRound(emitted, len(path), tree.nodes, (t1 - t0) * 1e3, (t2 - t1) * 1e3,
                                    [v - 1 for v in path]))
        if on_round is not None:
            on_round(tree, out.rounds[-1])
        r += 1
    out.tokens = out.tokens[:max_new]
    return out


class TreeDraftSession:
    """The edge's draft model for tree rounds of one request: `propose` drafts a tree (top-c children,
    one batched forward per depth), `apply` takes the round's emitted tokens. Between rounds the cache
    covers every context token but the last (as TreeCache); the nodes a round fed are cropped and
    the emitted path re-fed, so the cache never holds a rejected node."""

    def __init__(self, model, context: list[int], vocab_size: int):
        self.cache = TreeCache(model, context, vocab_size)

    def propose(self, tree: Tree, seed: int) -> Draft:
        t0 = time.perf_counter()
        tokens = draft_tree(self.cache, tree)
        return Draft(tokens[1:], seed, draft_ms=(time.perf_counter() - t0) * 1e3, parents=list(tree.parents))

    def apply(self, emitted: list[int]) -> None:
        """The round's new tokens (the accepted path, then the target's): back to the invariant."""
        c = self.cache
        base = len(c.tokens) - 1
        c.crop(base)
        feed = [c.tokens[-1]] + emitted[:-1]
        c.feed(feed, [i - 1 for i in range(len(feed))], [base + i for i in range(len(feed))])
        c.tokens.extend(emitted)
