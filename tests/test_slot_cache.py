"""Slot KV cache: a batched forward over slots of different lengths gives each sequence the
logits it gets alone; rollback, admission and eviction touch one slot only; bad input is a
one-line error that changes nothing."""
from __future__ import annotations

import pytest
import torch

from nodes.models.errors import ModelError
from nodes.models.slots import SlotCache, SlotCapacityError, SlotsFull, slot_support
from nodes.models.train_pair import corpus_documents

ATOL = 1e-4  # measured differences are ~1e-5 (different batch shapes, same math)


def text(pair, n: int, doc: int = 3) -> list[int]:
    ids = pair.tokenizer.encode(" ".join(corpus_documents()[doc:doc + 4]), add_special_tokens=False)
    assert len(ids) >= n
    return ids[:n]


def alone(model, tokens: list[int], keep: int) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([tokens])).logits[0, len(tokens) - keep:]


def fill(cache: SlotCache, tokens: list[int]) -> int:
    slot = cache.admit()
    cache.forward([slot], [tokens], [0])
    return slot


def test_a_ragged_batch_gives_each_sequence_its_own_logits(pair):
    model = pair.target
    cache = SlotCache(model, max_len=1024)
    contexts = [text(pair, n, doc) for n, doc in ((1, 0), (7, 1), (60, 2), (250, 3), (33, 4))]
    feeds = [text(pair, n, doc + 10) for n, doc in ((9, 0), (1, 1), (5, 2), (3, 3), (7, 4))]
    slots = [fill(cache, c) for c in contexts]
    out = cache.forward(slots, feeds, [len(f) for f in feeds])
    for c, f, got in zip(contexts, feeds, out.logits):
        want = alone(model, c + f, len(f))
        assert got.shape == want.shape
        assert (got - want).abs().max() < ATOL
    assert [cache.length(s) for s in slots] == [len(c) + len(f) for c, f in zip(contexts, feeds)]
    assert out.rows == 5 and out.real_tokens == 25 and out.padded_tokens == 45


def test_rollback_keeps_exactly_the_prefix(pair):
    model = pair.target
    cache = SlotCache(model, max_len=512)
    ctx, first, second = text(pair, 80), text(pair, 6, 7), text(pair, 4, 8)
    slot = fill(cache, ctx)
    cache.forward([slot], [first], [6])
    cache.crop(slot, len(ctx) + 2)  # two of six accepted
    got = cache.forward([slot], [second], [4]).logits[0]
    assert (got - alone(model, ctx + first[:2] + second, 4)).abs().max() < ATOL
    with pytest.raises(ModelError, match="cannot crop"):
        cache.crop(slot, cache.length(slot) + 1)


def test_admission_and_eviction_between_batches_leave_the_other_slots_untouched(pair):
    model = pair.target
    cache = SlotCache(model, max_len=512, slots=4)
    a, b, c = text(pair, 40, 1), text(pair, 90, 2), text(pair, 15, 3)
    sa, sb, sc = fill(cache, a), fill(cache, b), fill(cache, c)
    keep_a = cache.k[:, sa, :, : len(a)].clone()
    cache.evict(sb)
    d = text(pair, 120, 5)
    sd = fill(cache, d)  # takes the freed slot and overwrites its storage
    assert sd == sb and cache.grows == 0
    assert torch.equal(cache.k[:, sa, :, : len(a)], keep_a)  # no other slot was copied or written
    feeds = [text(pair, 3, 9), text(pair, 5, 10), text(pair, 2, 11)]
    out = cache.forward([sc, sd, sa], feeds, [3, 5, 2])
    for ctx, f, got in zip((c, d, a), feeds, out.logits):
        assert (got - alone(model, ctx + f, len(f))).abs().max() < ATOL
    cache.evict(sd)
    cache.evict(sd)  # idempotent
    with pytest.raises(ModelError, match="not in use"):
        cache.forward([sd], [[1]], [1])


def test_gapped_slot_sets_run_as_idle_rows_or_gathered_with_the_same_logits(pair):
    model = pair.target
    cache = SlotCache(model, max_len=512, slots=8)
    contexts = [text(pair, 10 + 20 * i, i) for i in range(6)]
    slots = [fill(cache, ctx) for ctx in contexts]
    picked = [slots[0], slots[2], slots[5]]  # gaps at 1, 3, 4
    feed = text(pair, 4, 12)
    outs = []
    for gaps in (True, False):
        cache.gather_gaps = gaps
        outs.append(cache.forward(picked, [feed] * 3, [4] * 3).logits)
        for s, ctx in zip(picked, (contexts[0], contexts[2], contexts[5])):
            cache.crop(s, len(ctx))
    for ctx, x, y in zip((contexts[0], contexts[2], contexts[5]), *outs):
        want = alone(model, ctx + feed, 4)
        assert (x - want).abs().max() < ATOL and (y - want).abs().max() < ATOL
    assert [cache.length(s) for s in slots] == [len(c) for c in contexts]  # idle rows wrote nothing


def test_capacity_and_slot_count_grow_in_chunks_keeping_what_is_held(pair):
    model = pair.target
    cache = SlotCache(model, max_len=256, chunk=16, slots=1)
    a, b = text(pair, 20, 1), text(pair, 50, 2)
    sa, sb = fill(cache, a), fill(cache, b)
    assert cache.slots == 2 and cache.capacity == 64 and cache.grows >= 2
    out = cache.forward([sa, sb], [[5], [6]], [1, 1])
    assert (out.logits[0] - alone(model, a + [5], 1)).abs().max() < ATOL
    assert (out.logits[1] - alone(model, b + [6], 1)).abs().max() < ATOL


def test_bad_input_is_a_one_line_error_and_changes_nothing(pair):
    cache = SlotCache(pair.target, max_len=64, chunk=16, slots=2, max_slots=2)
    s = fill(cache, text(pair, 30))
    for bad, match in (
        (lambda: cache.forward([s], [text(pair, 40)], [1]), "exceeds the slot capacity of 64"),
        (lambda: cache.forward([s], [[]], [0]), "nothing to feed"),
        (lambda: cache.forward([s, s], [[1], [2]], [1, 1]), "twice"),
        (lambda: cache.forward([s], [[1]], [2]), "cannot keep"),
    ):
        with pytest.raises(ModelError, match=match) as info:
            bad()
        assert "\n" not in str(info.value)
        assert cache.length(s) == 30
    with pytest.raises(SlotCapacityError) as info:
        cache.forward([s], [text(pair, 40)], [1])
    assert info.value.code == "too_long"
    cache.admit()
    with pytest.raises(SlotsFull, match="all 2 slots"):
        cache.admit()
    with pytest.raises(SlotsFull, match="MiB"):
        SlotCache(pair.target, max_bytes=1 << 20, slots=1, chunk=64).reserve(4096)


def test_other_llama_like_models_and_eager_attention_match_too():
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    small = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=64)
    models = [Qwen2ForCausalLM(Qwen2Config(**small)).eval(),
              LlamaForCausalLM(LlamaConfig(**small, attn_implementation="eager")).eval()]
    for model in models:
        assert slot_support(model) is None
        cache = SlotCache(model, max_len=128)
        seqs = [[1, 2, 3, 4], [5] * 20, [7, 8]]
        slots = [cache.admit() for _ in seqs]
        cache.forward(slots[:2], [seqs[0][:-2], seqs[1][:-1]], [0, 0])
        out = cache.forward(slots, [seqs[0][-2:], seqs[1][-1:], seqs[2]], [2, 1, 2])
        for sq, got in zip(seqs, out.logits):
            assert (got - alone(model, sq, got.shape[0])).abs().max() < ATOL


def test_unsupported_model_classes_are_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=0,
                                      eos_token_id=0)).eval()
    assert "GPT2LMHeadModel is not a slot-cache model class" in slot_support(gpt2)
    with pytest.raises(ModelError, match="no slot cache"):
        SlotCache(gpt2)
