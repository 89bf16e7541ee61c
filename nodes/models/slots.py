"""Slot KV cache: one K/V row per live sequence, so sequences of different lengths
run as one forward pass without ever being copied together.

Why: assembling per-request caches into a padded batch every round (concatenate,
pad, split back) cost more than the batched forward saved. Here the cache *is*
the batch layout: K and V are tensors [layers, slots, kv_heads, capacity, head_dim].

Layout and masking (left-aligned storage, right-padded feeds):
  * slot s holds its sequence from index 0: token i's K/V at index i, so a
    token's position id equals its storage index and rotary embeddings are
    exactly those of a batch-1 forward;
  * in a batched forward, row b feeds n_b new tokens, right-padded to the
    longest feed Q; query j of row b (absolute position c_b + j, c_b = cached
    length) sees keys k <= c_b + j and k < c_b + n_b: its own cache and new
    tokens, never a pad. A padded query sees all of its row, so no softmax row
    is empty (no NaN), and its output is ignored;
  * only real tokens' K/V are written; attention reads the batch's slots up to
    the longest row (a view when the slots are consecutive, else one
    index_select per layer). Entries past a slot's length are masked, so
    they may hold anything finite (storage starts zeroed).

Admit takes a free slot (length 0), evict returns it, crop sets a slot's length
(rollback after a verdict): none of them touches another slot's storage.
Growth: the slot count doubles when no slot is free; the capacity doubles
(at least to the next multiple of `chunk` tokens that fits the longest
sequence), up to `max_len`, `max_slots` and `max_bytes` (past the memory
budget it grows by chunks only, then refuses with SlotsFull). Each growth
copies the storage once (amortised; `grows` counts them); storage never
shrinks, so one long context makes every slot that long (the budget bounds it).

Supported: LlamaForCausalLM and Qwen2ForCausalLM with full attention on every
layer, attention implementation "sdpa" or "eager" (`slot_support` says why
not otherwise); callers fall back to the per-request DynamicCache path
(nodes/models/sessions.py) for anything else.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from nodes.models.errors import ModelError
from nodes.models.sessions import _cache_kwarg

SUPPORTED_CLASSES = frozenset({"LlamaForCausalLM", "Qwen2ForCausalLM"})
SUPPORTED_ATTENTION = frozenset({"sdpa", "eager"})


class SlotsFull(ModelError):
    """No slot (or no memory under the budget) for another sequence: use the per-request path."""


class SlotCapacityError(ModelError):
    """A sequence would grow past the slot capacity."""

    code = "too_long"


def slot_support(model) -> str | None:
    """None when `model` can run on a slot cache, else why not (one line)."""
    name = type(model).__name__
    if name not in SUPPORTED_CLASSES:
        return f"{name} is not a slot-cache model class ({', '.join(sorted(SUPPORTED_CLASSES))})"
    cfg = model.config
    attn = getattr(cfg, "_attn_implementation", None)
    if attn not in SUPPORTED_ATTENTION:
        return f"attention implementation {attn!r} is not {sorted(SUPPORTED_ATTENTION)}"
    kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"} or getattr(cfg, "use_sliding_window", False):
        return f"layer types {sorted(kinds)}: only full attention is supported"
    return None


@dataclass
class SlotForward:
    """One batched forward: per row, logits of its last `keep` fed positions ([keep, vocab])."""

    logits: list[torch.Tensor]
    forward_ms: float      # the model call, K/V writes and reads included
    prep_ms: float         # ids, positions, mask, write indices
    kv_ms: float           # K/V writes and reads inside the forward (part of forward_ms)
    rows: int
    padded_tokens: int     # rows x longest feed
    real_tokens: int
    hidden: list[torch.Tensor] | None = None  # per row, last-layer hidden states of the kept positions


class _BatchKV(Cache):
    """What the model sees as its cache for one batched forward: writes the new K/V into
    the rows' slots and returns their K/V up to the longest row."""

    def __init__(self, store: "SlotCache", slots: torch.Tensor, span: tuple[int, int] | None,
                 write: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], kv_len: int):
        super().__init__(layers=[])
        self.store, self.slots, self.span, self.write, self.kv_len = store, slots, span, write, kv_len
        self.kv_s = 0.0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        t0 = time.perf_counter()
        ws, wp, wb, wq = self.write
        k_all, v_all = self.store.k[layer_idx], self.store.v[layer_idx]  # [slots, heads, capacity, dim]
        k_all[ws, :, wp] = key_states[wb, :, wq]
        v_all[ws, :, wp] = value_states[wb, :, wq]
        if self.span is not None:
            lo, hi = self.span
            keys, values = k_all[lo:hi, :, : self.kv_len], v_all[lo:hi, :, : self.kv_len]
        else:
            keys = k_all[:, :, : self.kv_len].index_select(0, self.slots)
            values = v_all[:, :, : self.kv_len].index_select(0, self.slots)
        self.kv_s += time.perf_counter() - t0
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv_len

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.kv_len, 0


class SlotCache:
    """Slot storage for one model; `forward` runs any set of slots as one batch.

    Admit/evict may be called from another thread than `forward` (a lock guards the
    free list); `forward` and growth run on one thread (the model thread)."""

    def __init__(self, model, max_slots: int = 128, max_len: int = 8192, chunk: int = 256, slots: int = 8,
                 max_bytes: int = 2 << 30):
        why = slot_support(model)
        if why is not None:
            raise ModelError(f"no slot cache: {why}")
        if max_slots < 1 or max_len < 1 or chunk < 1:
            raise ModelError("slot cache sizes must be >= 1")
        cfg = model.config
        self.model = model
        self.layers = cfg.num_hidden_layers
        self.heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.eager = cfg._attn_implementation == "eager"
        self.pad_id = int(cfg.pad_token_id) if getattr(cfg, "pad_token_id", None) is not None else 0
        self.max_slots, self.max_len, self.chunk, self.max_bytes = max_slots, max_len, chunk, max_bytes
        self.grows = 0
        self.gather_gaps = True  # fill range gaps with idle rows (see _rows)
        self.lengths: list[int] = []
        self.used: set[int] = set()
        self._free: list[int] = []
        self._lock = threading.Lock()
        self.k = self.v = torch.zeros(0)
        self._alloc(min(slots, max_slots), min(chunk, max_len))

    # --- sizes ----------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        return int(self.k.shape[3])

    def _bytes(self, slots: int, capacity: int) -> int:
        return 2 * self.layers * slots * self.heads * capacity * self.head_dim * self.k.element_size()

    def _alloc(self, slots: int, capacity: int) -> None:
        shape = (self.layers, slots, self.heads, capacity, self.head_dim)
        k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if self.lengths:  # copy what is held (growth only: admit/evict/crop never copy)
            s0, c0 = self.k.shape[1], self.k.shape[3]
            k[:, :s0, :, :c0] = self.k
            v[:, :s0, :, :c0] = self.v
            self.grows += 1
        new = list(range(len(self.lengths), slots))
        self.k, self.v = k, v
        self.lengths.extend(0 for _ in new)
        self._free.extend(reversed(new))  # lowest index first: batches stay consecutive when they can

    @property
    def bytes(self) -> int:
        return self._bytes(self.slots, self.capacity)

    # --- admit / evict / crop -------------------------------------------------------
    def admit(self) -> int:
        """A free slot (length 0); grows the slot count when none is free. SlotsFull at the bounds."""
        with self._lock:
            if not self._free:
                n = min(self.max_slots, max(1, 2 * self.slots))
                if n == self.slots:
                    raise SlotsFull(f"all {self.max_slots} slots are in use")
                if self._bytes(n, self.capacity) > self.max_bytes:
                    raise SlotsFull(f"{n} slots of {self.capacity} tokens would exceed {self.max_bytes >> 20} MiB")
                self._alloc(n, self.capacity)
            self._free.sort(reverse=True)
            s = self._free.pop()
            self.used.add(s)
            self.lengths[s] = 0
            return s

    def evict(self, slot: int) -> None:
        """Give `slot` back (idempotent); its storage is simply overwritten by the next owner."""
        with self._lock:
            if slot in self.used:
                self.used.discard(slot)
                self.lengths[slot] = 0
                self._free.append(slot)

    def crop(self, slot: int, length: int) -> None:
        """Roll `slot` back to its first `length` tokens."""
        self._check(slot)
        if not 0 <= length <= self.lengths[slot]:
            raise ModelError(f"cannot crop slot {slot} of {self.lengths[slot]} tokens to {length}")
        self.lengths[slot] = length

    def length(self, slot: int) -> int:
        self._check(slot)
        return self.lengths[slot]

    def _check(self, slot: int) -> None:
        if slot not in self.used:
            raise ModelError(f"slot {slot} is not in use")

    def reserve(self, need: int) -> None:
        """Room for `need` tokens in every slot (grows the capacity in chunks); SlotCapacityError past
        `max_len`, SlotsFull past the memory budget. Called on the model thread only."""
        if need > self.max_len:
            raise SlotCapacityError(f"context of {need} tokens exceeds the slot capacity of {self.max_len}")
        if need <= self.capacity:
            return
        with self._lock:
            least = min(self.max_len, -(-need // self.chunk) * self.chunk)
            doubled = max(least, min(self.max_len, 2 * self.capacity))  # a growing context copies rarely
            cap = doubled if self._bytes(self.slots, doubled) <= self.max_bytes else least
            if self._bytes(self.slots, cap) > self.max_bytes:
                raise SlotsFull(f"{self.slots} slots of {cap} tokens would exceed {self.max_bytes >> 20} MiB")
            self._alloc(self.slots, cap)

    # --- the batched forward ----------------------------------------------------------
    def _rows(self, slots: list[int]) -> tuple[list[int], bool]:
        """The forward's rows (slot ids, ascending) and whether they are one consecutive range.

        Attention reads a consecutive range of slots as a view; any other set must be gathered
        (a copy of every row's K/V per layer, measured about as costly as the attention itself).
        So a set with few gaps runs over its whole range, the gaps as idle rows (no writes,
        output ignored): up to `gap_rows(b)` idle rows are cheaper than gathering b rows."""
        rows = sorted(slots)
        lo, hi = rows[0], rows[-1] + 1
        if hi - lo - len(rows) <= self.gap_rows(len(rows)):
            return list(range(lo, hi)), True
        return rows, False

    def gap_rows(self, b: int) -> int:
        return b // 2 if self.gather_gaps else 0

    @torch.inference_mode()
    def forward(self, slots: list[int], feeds: list[list[int]], keep: list[int], hidden: bool = False,
                trees: list[list[int] | None] | None = None) -> SlotForward:
        """Feed `feeds[b]` to slot `slots[b]` (appending to it) in one forward pass; logits (and with
        `hidden`, last hidden states) for the last `keep[b]` positions of each feed. Raises ModelError
        (nothing changed) on bad input.

        `trees[b]` (when given and not None): the feed is a tree, `trees[b][j]` the feed index of
        position j's parent (-1: none, it sees only the slot's cache). Position j then attends to the
        cache and its ancestors in the feed (tree attention) at position id cached length + its depth,
        so its logits are those of a chain along its path; its K/V is stored at index cached length + j,
        and `compact` keeps the accepted path's rows afterwards."""
        t0 = time.perf_counter()
        if not (len(slots) == len(feeds) == len(keep)) or not slots:
            raise ModelError("forward needs one feed and one keep per slot, and at least one slot")
        if len(set(slots)) != len(slots):
            raise ModelError("a slot appears twice in one batch")
        for s, f, k in zip(slots, feeds, keep):
            self._check(s)
            if not f:
                raise ModelError(f"slot {s}: nothing to feed")
            if not 0 <= k <= len(f):
                raise ModelError(f"slot {s}: cannot keep {k} logits of a {len(f)}-token feed")
        ends = [self.lengths[s] + len(f) for s, f in zip(slots, feeds)]
        self.reserve(max(ends))
        rows, span = self._rows(slots)
        where = {s: r for r, s in enumerate(rows)}
        b, q, kv_len = len(rows), max(len(f) for f in feeds), max(ends)
        rows_ids = [[self.pad_id] * q for _ in range(b)]
        n_l, start_l = [0] * b, [0] * b             # idle rows (range gaps) feed nothing
        for s, f in zip(slots, feeds):              # Python lists, then one tensor each: per-row
            r = where[s]                            # tensor writes cost more than the rest of prep
            rows_ids[r][: len(f)] = f
            n_l[r], start_l[r] = len(f), self.lengths[s]
        ids, n, start = (torch.tensor(x, dtype=torch.long) for x in (rows_ids, n_l, start_l))
        positions = start[:, None] + torch.arange(q)[None, :]                       # [B, Q]
        key = torch.arange(kv_len)[None, None, :]                                   # [1, 1, K]
        mask = (key <= positions[:, :, None]) & (key < (start + n)[:, None, None])  # [B, Q, K]
        for s, f, tree in zip(slots, feeds, trees or [None] * len(slots)):
            if tree is not None:
                self._tree_row(where[s], self.lengths[s], f, tree, positions, mask)
        mask[:, :, 0] |= n[:, None] == 0  # an idle row sees key 0 only: no empty softmax row
        mask = mask[:, None]                                                        # [B, 1, Q, K]
        if self.eager:
            mask = torch.zeros(mask.shape, dtype=self.dtype).masked_fill(~mask, torch.finfo(self.dtype).min)
        real = torch.arange(q)[None, :] < n[:, None]                                # [B, Q]
        wb, wq = real.nonzero(as_tuple=True)
        slot_t = torch.tensor(rows, dtype=torch.long)
        dev = self.device
        write = (slot_t[wb].to(dev), (start[wb] + wq).to(dev), wb.to(dev), wq.to(dev))
        view = _BatchKV(self, slot_t.to(dev), (rows[0], rows[-1] + 1) if span else None, write, kv_len)
        first = min(len(f) - k for f, k in zip(feeds, keep) if k > 0) if any(keep) else q - 1
        to_keep = q - first
        prep = time.perf_counter()
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev),
                         use_cache=True, logits_to_keep=to_keep, output_hidden_states=hidden,
                         **{_cache_kwarg(self.model): view})
        done = time.perf_counter()
        for s, e in zip(slots, ends):
            self.lengths[s] = e
        off = q - to_keep
        logits = [out.logits[where[s], len(f) - k - off: len(f) - off] if k else out.logits[where[s], :0]
                  for s, f, k in zip(slots, feeds, keep)]
        states = None
        if hidden:
            last = out.hidden_states[-1]  # [B, Q, hidden]: every fed position
            states = [last[where[s], len(f) - k: len(f)] for s, f, k in zip(slots, feeds, keep)]
        return SlotForward(logits, (done - prep) * 1e3, (prep - t0) * 1e3, view.kv_s * 1e3, len(slots), b * q,
                           int(n.sum()), states)


    @staticmethod
    def _tree_row(r: int, start: int, feed: list[int], tree: list[int], positions: torch.Tensor,
                  mask: torch.Tensor) -> None:
        """Row r's positions and mask for a tree feed (see `forward`)."""
        if len(tree) != len(feed):
            raise ModelError(f"tree feed of {len(feed)} tokens has {len(tree)} parents")
        depth: list[int] = []
        for j, p in enumerate(tree):
            if type(p) is not int or not -1 <= p < j:
                raise ModelError(f"tree feed: position {j} has parent {p!r}, not an earlier position or -1")
            depth.append(0 if p < 0 else depth[p] + 1)
            positions[r, j] = start + depth[j]
            mask[r, j, start:] = False
            a = j
            while a >= 0:
                mask[r, j, start + a] = True
                a = tree[a]

    def compact(self, slot: int, start: int, rows: list[int]) -> None:
        """Keep, after the first `start` tokens, only the stored rows `start + rows[i]` (ascending), moved
        to `start + i`; the slot's length becomes start + len(rows). A tree round keeps its accepted
        path this way: the kept rows' position ids already equal their new indices."""
        self._check(slot)
        out_of_range = bool(rows) and (rows[0] < 0 or start + rows[-1] >= self.lengths[slot])
        if out_of_range or any(b <= a for a, b in zip(rows, rows[1:])):
            raise ModelError(f"slot {slot}: cannot keep rows {rows[:8]} of {self.lengths[slot] - start} after {start}")
        if rows != list(range(len(rows))):
            src = torch.tensor([start + i for i in rows], dtype=torch.long, device=self.device)
            dst = torch.arange(start, start + len(rows), dtype=torch.long, device=self.device)
            for store in (self.k, self.v):
                store[:, slot, :, dst] = store[:, slot, :, src].clone()
        self.lengths[slot] = start + len(rows)


class SlotHolder:
    """One sequence held in a slot of a SlotCache: the slot covers every context token but the
    last (`pending`, fed with the next forward). Shared by the draft and the verify sessions.

    A long context may be prefilled in chunks (`prefill_chunk`): the slot is taken at once and
    `prefill_step` feeds the next chunk, so a caller can interleave one chunk with other
    sequences' rounds instead of stalling them for the whole prompt."""

    slot_cache: SlotCache
    slot: int | None
    _unfilled: list[int]

    def _open_slot(self, cache: SlotCache, context: list[int], prefill_chunk: int | None = None) -> None:
        """Take a slot and prefill all of `context` but its last token (or only take the slot, when the
        prefix is longer than `prefill_chunk`); the slot goes back if that fails."""
        if not context:
            raise ModelError("context is empty: a session needs at least one token")
        self.slot_cache = cache
        cache.reserve(len(context))  # raises before a slot is taken
        self.slot = cache.admit()
        self._unfilled = list(context[:-1])
        if prefill_chunk is None or len(self._unfilled) <= prefill_chunk:
            self.prefill_step(None)

    @property
    def prefilled(self) -> bool:
        return not self._unfilled

    def prefill_step(self, max_tokens: int | None) -> int:
        """Feed up to `max_tokens` (None: all) of the context not yet in the slot; the tokens fed."""
        part = self._unfilled if max_tokens is None else self._unfilled[:max_tokens]
        if part:
            try:
                self.slot_cache.forward([self.live_slot], [part], [0])
            except BaseException:
                self.release()
                raise
            self._unfilled = self._unfilled[len(part):]
        return len(part)

    @property
    def live_slot(self) -> int:
        if self.slot is None:
            raise ModelError("this session's slot was released")
        return self.slot

    @property
    def cached_len(self) -> int:
        return self.slot_cache.length(self.live_slot)

    def release(self) -> None:
        """Give the slot back (idempotent): the session cannot be used after this."""
        if self.slot is not None:
            self.slot_cache.evict(self.slot)
            self.slot = None
