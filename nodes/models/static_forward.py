"""The batched slot forward at static shapes, replayed as CUDA graphs on a GPU.

Why: on a GPU the eager slot forward is launch-bound (hundreds of small kernels, host-side mask and index
building, shapes that change every step), 4-10x slower than one graph-replayed forward of the same shape.
Here a batch is padded to a bucket (rows to 1, 2, 4, ... 64; keys to a power of two >= 256, capped at the
slot capacity; the feed length is exact), and everything that changes between steps is one int64 device
tensor written in place before the replay: token ids, each row's start and fed count, the slot each row
reads, and where each fed token's K/V goes. Positions and the attention mask are computed from those on
the device, inside the graph, so nothing host-side is baked in.

Pad positions and idle rows (the bucket's padding) write their K/V into one scratch slot that this runner
holds for its lifetime, and idle rows read it (masked to its first key): real slots only ever receive real
tokens' K/V, exactly as in `SlotCache.forward`.

On a CPU the same static forward runs eagerly (`capture=False`): that is how the tests check it against the
eager path. A graph depends on the slot storage's address, so a growth of the cache drops every graph
(they are captured again at first use).
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from nodes.models.errors import ModelError
from nodes.models.sessions import _cache_kwarg
from nodes.models.slots import SlotCache

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MAX_FEED = 16        # longest static feed (a verify step feeds 1 + draft length tokens)
MIN_KEYS = 256
MAX_GRAPHS = 48      # captured shapes kept (oldest dropped first): each holds its activations' memory
PACKED_GQA = True    # grouped-query attention without the K/V copy per query head (see _packed_sdpa)


def batch_bucket(b: int) -> int | None:
    return next((x for x in BATCH_BUCKETS if x >= b), None)


def key_bucket(kv_len: int, capacity: int) -> int:
    k = MIN_KEYS
    while k < kv_len:
        k *= 2
    return min(k, capacity)


def _packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA for grouped-query attention without expanding K/V to every query head: each K/V head's query heads
    are stacked along the query axis ([B, H, Q, D] -> [B, H_kv, G*Q, D]; the mask, the same for every head,
    repeated G times), so attention reads the gathered K/V once instead of a G-times copy (Qwen2-7B: G = 7)."""
    b, h, q, d = query.shape
    hk = key.shape[1]
    g = h // hk
    mask = attention_mask
    if mask is not None and g > 1:
        mask = mask.expand(b, 1, q, mask.shape[-1]).repeat(1, 1, g, 1)
    out = torch.nn.functional.scaled_dot_product_attention(query.reshape(b, hk, g * q, d), key, value,
                                                           attn_mask=mask, scale=scaling)
    return out.reshape(b, h, q, d).transpose(1, 2).contiguous(), None


@contextmanager
def _grouped_attention(model):
    """Route this model's "sdpa" attention through `_packed_sdpa` for the duration (the static forward only: the
    model thread is the only caller, and a CUDA graph keeps the kernels it captured)."""
    registry = getattr(sys.modules.get(type(model).__module__), "ALL_ATTENTION_FUNCTIONS", None)
    cfg = model.config
    groups = cfg.num_attention_heads // (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    if registry is None or cfg._attn_implementation != "sdpa" or groups == 1 or not PACKED_GQA:
        yield
        return
    local = registry._local_mapping
    before = local.get("sdpa")
    local["sdpa"] = _packed_sdpa
    try:
        yield
    finally:
        if before is None:
            local.pop("sdpa", None)
        else:
            local["sdpa"] = before


class _StaticKV(Cache):
    """The cache the model sees in a static forward: scatter the fed K/V, gather the rows' slots."""

    def __init__(self, store: SlotCache, read: torch.Tensor, wslot: torch.Tensor, wpos: torch.Tensor, keys: int):
        super().__init__(layers=[])
        self.store, self.read, self.wslot, self.wpos, self.keys = store, read, wslot, wpos, keys

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        b, h, q, d = key_states.shape
        k_all, v_all = self.store.k[layer_idx], self.store.v[layer_idx]  # [slots, heads, capacity, dim]
        k_all[self.wslot, :, self.wpos] = key_states.transpose(1, 2).reshape(b * q, h, d)
        v_all[self.wslot, :, self.wpos] = value_states.transpose(1, 2).reshape(b * q, h, d)
        keys = k_all[:, :, : self.keys].index_select(0, self.read)
        values = v_all[:, :, : self.keys].index_select(0, self.read)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.keys, 0


@dataclass
class _Shape:
    rows: int
    feed: int
    keys: int
    hidden: bool                  # also the last layer's hidden states (a draft step whose stop rule reads them)
    inputs: torch.Tensor          # int64 [rows*feed*3 + rows*3] on the device
    logits: torch.Tensor | None = None
    argmax: torch.Tensor | None = None
    states: torch.Tensor | None = None
    graph: object | None = None


@dataclass
class StaticOut:
    """One static forward: the rows' logits [bucket rows, feed, vocab] (row b of the call = row b here)
    and their argmax over the first `vocab` logits, on the host ([rows, feed])."""

    logits: torch.Tensor
    argmax: list[list[int]]
    hidden: torch.Tensor | None  # [bucket rows, feed, hidden] when asked
    rows: int                 # the bucket's rows
    keys: int
    forward_ms: float         # input copy, replay (or eager forward) and the argmax read back
    prep_ms: float
    captured: bool            # this call captured its shape's graph first


class StaticForward:
    """Static-shape forwards over one SlotCache; `capture`: CUDA graphs (a CUDA device only)."""

    def __init__(self, cache: SlotCache, vocab: int, capture: bool | None = None):
        if capture is None:
            capture = cache.device.type == "cuda"
        if capture and cache.device.type != "cuda":
            raise ModelError(f"CUDA graphs need a CUDA device, not {cache.device}")
        self.cache, self.vocab, self.capture = cache, vocab, capture
        self.eager_mask = cache.eager
        self.scratch = cache.admit()  # pads and idle rows write here (held for this runner's life)
        self.shapes: dict[tuple[int, int, int], _Shape] = {}
        self._storage = None
        self.captures = 0

    def supports(self, rows: int, feed: int) -> bool:
        return batch_bucket(rows) is not None and feed <= MAX_FEED

    def close(self) -> None:
        self.shapes.clear()
        self.cache.evict(self.scratch)

    # --- the static computation ------------------------------------------------------
    def _compute(self, s: _Shape) -> None:
        """The forward of shape `s` from its input tensor (the body a graph captures)."""
        b, q, k = s.rows, s.feed, s.keys
        x = s.inputs
        ids = x[: b * q].view(b, q)
        start, n, read = x[b * q: b * q + b], x[b * q + b: b * q + 2 * b], x[b * q + 2 * b: b * q + 3 * b]
        wslot = x[b * q + 3 * b: 2 * b * q + 3 * b]
        wpos = x[2 * b * q + 3 * b: 3 * b * q + 3 * b]
        dev = x.device
        positions = start[:, None] + torch.arange(q, device=dev)[None, :]                # [B, Q]
        key = torch.arange(k, device=dev)[None, None, :]                                 # [1, 1, K]
        mask = (key <= positions[:, :, None]) & (key < (start + n)[:, None, None])       # [B, Q, K]
        mask = mask | ((key == 0) & (n == 0)[:, None, None])                             # idle rows: key 0
        mask = mask[:, None]
        if self.eager_mask:
            dt = self.cache.dtype
            mask = torch.zeros(mask.shape, dtype=dt, device=dev).masked_fill(~mask, torch.finfo(dt).min)
        view = _StaticKV(self.cache, read, wslot, wpos, k)
        model = self.cache.model
        with _grouped_attention(model):
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                        logits_to_keep=q, output_hidden_states=s.hidden, **{_cache_kwarg(model): view})
        s.logits = out.logits
        s.states = out.hidden_states[-1] if s.hidden else None
        s.argmax = out.logits[..., : self.vocab].argmax(-1)

    def _shape(self, rows: int, feed: int, keys: int, hidden: bool) -> tuple[_Shape, bool]:
        storage = (self.cache.k.data_ptr(), self.cache.v.data_ptr(), tuple(self.cache.k.shape))
        if storage != self._storage:  # the cache grew: graphs point at the old storage
            self.shapes.clear()
            self._storage = storage
        key = (rows, feed, keys, hidden)
        s = self.shapes.get(key)
        if s is not None:
            return s, False
        while len(self.shapes) >= MAX_GRAPHS:
            self.shapes.pop(next(iter(self.shapes)))
        inputs = torch.zeros(3 * rows * feed + 3 * rows, dtype=torch.long, device=self.cache.device)
        s = _Shape(rows, feed, keys, hidden, inputs)
        s.inputs.copy_(self._idle_inputs(rows, feed))
        if self.capture:
            self._capture(s)
        self.shapes[key] = s
        return s, self.capture

    def _capture(self, s: _Shape) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (allocator, kernel selection) on a side stream: idle inputs only
            for _ in range(2):
                self._compute(s)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # a private pool per shape: replays never alias another's memory
            self._compute(s)
        s.graph = graph
        self.captures += 1

    def _idle_inputs(self, rows: int, feed: int) -> torch.Tensor:
        """Every row idle: reads and writes the scratch slot only."""
        x = torch.zeros(3 * rows * feed + 3 * rows, dtype=torch.long)
        pad = self.cache.pad_id
        x[: rows * feed] = pad
        x[rows * feed + 2 * rows: rows * feed + 3 * rows] = self.scratch
        x[rows * feed + 3 * rows: 2 * rows * feed + 3 * rows] = self.scratch
        return x

    # --- one call --------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, slots: list[int], feeds: list[list[int]], hidden: bool = False) -> StaticOut:
        """Feed `feeds[b]` to slot `slots[b]` (appending); logits (and with `hidden`, last hidden states) of every
        fed position. The caller checked the slots (live, distinct) and feeds (non-empty); `supports(len(slots),
        longest feed)` must hold."""
        t0 = time.perf_counter()
        cache = self.cache
        b = len(slots)
        q = max(len(f) for f in feeds)
        ends = [cache.lengths[s] + len(f) for s, f in zip(slots, feeds)]
        cache.reserve(max(ends))
        rows = batch_bucket(b)
        keys = key_bucket(max(ends), cache.capacity)
        s, captured = self._shape(rows, q, keys, hidden)
        pad, scratch = cache.pad_id, self.scratch
        ids = [pad] * (rows * q)
        start, n, read = [0] * rows, [0] * rows, [scratch] * rows
        wslot, wpos = [scratch] * (rows * q), list(range(rows * q))
        for r, (slot, f) in enumerate(zip(slots, feeds)):
            c = cache.lengths[slot]
            ids[r * q: r * q + len(f)] = f
            start[r], n[r], read[r] = c, len(f), slot
            wslot[r * q: r * q + len(f)] = [slot] * len(f)
            wpos[r * q: r * q + len(f)] = range(c, c + len(f))
        scratch_cap = cache.capacity
        wpos = [p if w != scratch else p % scratch_cap for p, w in zip(wpos, wslot)]
        host = torch.tensor(ids + start + n + read + wslot + wpos, dtype=torch.long)
        prep = time.perf_counter()
        s.inputs.copy_(host, non_blocking=False)
        if s.graph is not None:
            s.graph.replay()
        else:
            self._compute(s)
        argmax = s.argmax[:b].tolist()  # the one host sync of the step
        done = time.perf_counter()
        for slot, e in zip(slots, ends):
            cache.lengths[slot] = e
        return StaticOut(s.logits, argmax, s.states, rows, keys, (done - prep) * 1e3, (prep - t0) * 1e3, captured)


def runner_for(cache: SlotCache, vocab: int) -> StaticForward:
    """The static runner of `cache` (one per cache: it holds the scratch slot), made at first use."""
    runner = getattr(cache, "_static_runner", None)
    if runner is None:
        runner = cache._static_runner = StaticForward(cache, vocab)
    return runner
