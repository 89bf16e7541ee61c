"""KV reuse: a normal round feeds at most L + 1 new tokens to either model, and the
cached state after a rejection gives the same logits as a fresh forward pass."""
import torch

from nodes.models.sessions import DraftSession, TargetSession
from nodes.models.train_pair import corpus_documents


def count_fed(model):
    fed = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        fed.append(int(ids.shape[1]))

    return fed, model.register_forward_pre_hook(hook, with_kwargs=True)


def prompt(pair, n=300):
    return pair.tokenizer.encode(corpus_documents()[5][:n], add_special_tokens=False)


def test_each_round_feeds_at_most_l_plus_one_tokens(pair):
    ctx = prompt(pair)
    draft = DraftSession(pair.draft, ctx, pair.vocab_size)
    target = TargetSession(pair.target, ctx, pair.vocab_size)
    d_fed, h1 = count_fed(pair.draft)
    t_fed, h2 = count_fed(pair.target)
    try:
        for L in [1, 4, 8, 2, 8, 8, 3, 5] * 3:
            d_fed.clear()
            t_fed.clear()
            d = draft.propose(L)
            v = target.verify(d)
            draft.apply(v)
            assert sum(d_fed) <= L + 1, (L, d_fed)
            assert len(t_fed) == 1 and t_fed[0] <= L + 1, (L, t_fed)
    finally:
        h1.remove()
        h2.remove()


def fresh_logits(model, tokens, vocab):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([tokens])).logits[0, -1, :vocab]


def test_logits_after_a_rejection_match_a_fresh_forward_pass(pair):
    ctx = prompt(pair, 200)
    draft = DraftSession(pair.draft, ctx, pair.vocab_size)
    target = TargetSession(pair.target, ctx, pair.vocab_size)
    seen_rejection = False
    for _ in range(40):
        d = draft.propose(8)
        v = target.verify(d)
        draft.apply(v)
        if v.accepted < len(d):
            seen_rejection = True
            break
    assert seen_rejection
    assert draft.tokens == target.tokens
    for session, model in ((draft, pair.draft), (target, pair.target)):
        cached = session._forward(session.pending, keep=1).logits[0, -1, : pair.vocab_size]
        fresh = fresh_logits(model, session.tokens, pair.vocab_size)
        assert torch.allclose(cached, fresh, atol=1e-4)
        assert int(cached.argmax()) == int(fresh.argmax())


def test_session_rebuilt_from_the_full_context_continues_identically(pair):
    ctx = prompt(pair, 150)
    draft = DraftSession(pair.draft, ctx, pair.vocab_size)
    target = TargetSession(pair.target, ctx, pair.vocab_size)
    for _ in range(5):
        draft.apply(target.verify(draft.propose(4)))
    rebuilt = TargetSession(pair.target, list(target.tokens), pair.vocab_size)
    d = draft.propose(6)
    a, b = target.verify(d), rebuilt.verify(d)
    assert (a.accepted, a.next_token) == (b.accepted, b.next_token)
    assert target.tokens == rebuilt.tokens
