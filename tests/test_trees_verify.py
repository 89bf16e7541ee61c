"""Tree drafting + one tree-masked target forward per round is lossless on the bundled pair:
greedy output equals target-only, and sampled first tokens follow the target (chi-square)."""
import math

import numpy as np
import pytest
import torch

from control.trees import Tree, chain, optimal_trees, spine
from nodes.models.sampling import target_probs
from nodes.models.sessions import TargetSession
from nodes.models.tree_verify import tree_generate
from schemas.rounds import SamplingParams

PROMPTS = ["The cat sat on", "Once upon a time", "def add(a, b):"]
DP_TREE = optimal_trees(np.array([[0.6, 0.2, 0.1]] * 5), 10)[-1][0]  # the best 10-node tree of a made-up table
SHAPES = [Tree(()), chain(1), chain(4), spine(3, 2), spine(2, 3), Tree((-1, -1, 0, 0, 2, 1)), DP_TREE]


def target_only(pair, prompt, n):
    s = TargetSession(pair.target, prompt, pair.vocab_size)
    out = []
    while len(out) < n:
        v = s.step()
        out.append(v.next_token)
    return out


def encode(pair, text):
    return list(pair.tokenizer.encode(text))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda t: f"n{t.nodes}d{t.depth}w{t.width}")
def test_greedy_tree_output_equals_target_only(pair, shape):
    for text in PROMPTS:
        prompt = encode(pair, text)
        want = target_only(pair, prompt, 24)
        got = tree_generate(pair.draft, pair.target, pair.vocab_size, prompt, 24, shape)
        assert got.tokens == want, text


def test_greedy_output_equals_target_only_when_the_shape_changes_every_round(pair):
    shapes = iter(SHAPES * 20)
    seen = []
    prompt = encode(pair, PROMPTS[1])
    got = tree_generate(pair.draft, pair.target, pair.vocab_size, prompt, 32, lambda: next(shapes),
                        on_round=lambda tree, r: seen.append((tree, r.path)))
    assert got.tokens == target_only(pair, prompt, 32)
    assert [t for t, _ in seen] == (SHAPES * 20)[: len(seen)]
    # each reported path walks down the round's own tree from the root
    assert all(all(t.parents[v] == (path[i - 1] if i else -1) for i, v in enumerate(path)) for t, path in seen)


def test_a_wider_tree_needs_no_more_target_forwards_than_its_chain(pair):
    prompt = encode(pair, PROMPTS[0])
    c = tree_generate(pair.draft, pair.target, pair.vocab_size, prompt, 40, chain(4))
    t = tree_generate(pair.draft, pair.target, pair.vocab_size, prompt, 40, spine(4, 3))
    assert t.target_forwards <= c.target_forwards


ALPHA_Z = 3.090


def chi2_critical(df):
    return df * (1 - 2 / (9 * df) + ALPHA_Z * math.sqrt(2 / (9 * df))) ** 3


def exact_joint(model, prompt, params):
    """P(first two generated tokens) of target-only sampling, [16]."""
    with torch.inference_mode():
        p1 = target_probs(model(input_ids=torch.tensor([prompt])).logits[0, -1], params)
        rows = [p1[t] * target_probs(model(input_ids=torch.tensor([prompt + [t]])).logits[0, -1], params)
                for t in range(4)]
    return torch.stack(rows).flatten()


@pytest.mark.parametrize("shape", [spine(2, 2), Tree((-1, -1, -1, 0, 1))], ids=["spine2x2", "n5"])
def test_sampled_first_two_tokens_follow_the_target(tiny_pair, shape):
    params = SamplingParams(temperature=1.0, top_k=4)
    prompt = [1, 3, 0, 2, 2]
    p = exact_joint(tiny_pair.target, prompt, params)
    counts = torch.zeros(16)
    n = 1500
    for seed in range(n):
        g = tree_generate(tiny_pair.draft, tiny_pair.target, 4, prompt, 2, shape, params, seed)
        counts[4 * g.tokens[0] + g.tokens[1]] += 1
    e = p * n
    keep = e > 0
    stat = float(((counts - e) ** 2)[keep].div(e[keep]).sum())
    assert counts[~keep].sum() == 0
    assert stat < chi2_critical(int(keep.sum()) - 1)


def _verifier_generate(pair, prompt, n, shape, use_slots: bool) -> list[int]:
    """Tree rounds as the cloud runs them: the edge's TreeDraftSession, the verifier's BatchVerifier
    (on its slot cache, or per request when `use_slots` is off)."""
    from nodes.models.batch_verify import BatchVerifier, VerifyJob
    from nodes.models.tree_verify import TreeDraftSession
    from nodes.protocol.tree import round_tokens

    bv = BatchVerifier(pair.target, pair.vocab_size, max_slots=2, max_len=1024, use_slots=use_slots)
    drafter = TreeDraftSession(pair.draft, prompt, pair.vocab_size)
    state, context, out = None, prompt, []
    while len(out) < n:
        d = drafter.propose(shape, len(out))
        [res], _ = bv.run([VerifyJob(state, context, d, SamplingParams())])
        assert res.error is None, res.error
        state, context = res.state, None
        new = round_tokens(d.tokens, res.verdict)
        drafter.apply(new)
        out.extend(new)
    return out[:n]


@pytest.mark.parametrize("use_slots", [True, False], ids=["slot cache", "per request"])
def test_tree_rounds_on_the_verifiers_paths_equal_target_only(pair, use_slots):
    for text in PROMPTS:
        prompt = encode(pair, text)
        assert _verifier_generate(pair, prompt, 24, spine(4, 3), use_slots) == target_only(pair, prompt, 24), text


def test_a_tree_feed_on_the_slot_cache_gives_each_node_its_paths_chain_logits_and_compacts_to_the_path(pair):
    from nodes.models.slots import SlotCache

    cache = SlotCache(pair.target, max_slots=4, max_len=256)
    prefix = encode(pair, "Once upon a time")
    tree_slot, chain_slot = cache.admit(), cache.admit()
    for s in (tree_slot, chain_slot):
        cache.forward([s], [prefix[:-1]], [0])
    start = cache.length(tree_slot)
    feed, parents = [prefix[-1], 40, 50, 60, 70], [-1, 0, 0, 2, 2]  # root; 40, 50 under it; 60, 70 under 50
    got = cache.forward([tree_slot], [feed], [len(feed)], trees=[parents]).logits[0]
    want = cache.forward([chain_slot], [[prefix[-1], 50, 70]], [3]).logits[0]  # the path root, 50, 70
    assert torch.allclose(got[[0, 2, 4]], want, atol=1e-4)
    cache.compact(tree_slot, start, [0, 2, 4])  # keep the path's rows: the slot now equals the chain's
    nxt = [cache.forward([s], [[33]], [1]).logits[0][0] for s in (tree_slot, chain_slot)]
    assert cache.length(tree_slot) == cache.length(chain_slot) and torch.allclose(nxt[0], nxt[1], atol=1e-4)
