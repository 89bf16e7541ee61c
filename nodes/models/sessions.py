"""Per-request draft and target sessions that keep their KV caches across rounds.

Invariant on both sides: the cache covers every context token except the
`pending` ones, which are fed (with the new drafts) in the next forward. A
normal round therefore feeds at most L + 1 tokens to either model; rejected
positions are cropped from the cache, never re-encoded.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import DynamicCache

from nodes.models.errors import ModelError
from nodes.models.sampling import (
    accept_greedy, accept_sampled, draft_distribution, round_generators, sample_sparse, target_probs,
)
from schemas.rounds import Draft, SamplingParams, Verdict


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed `past_key_values` to `cache`; older model classes keep the old name."""
    name = getattr(model, "_specstop_cache_kwarg", None)
    if name is None:
        params = inspect.signature(model.forward).parameters
        name = "cache" if "cache" in params else "past_key_values"
        model._specstop_cache_kwarg = name
    return name


@dataclass(frozen=True)
class DraftStep:
    """One drafted token, as a stop rule sees it: its 1-based `position`, the `token`, the draft's
    probability `prob` of it (of the distribution it was drawn from), the draft's raw `logits` there
    ([vocab]) and its last hidden state (`hidden`, [hidden]); `hidden` is None unless the draft was
    asked for it (`propose(..., hidden=True)`)."""

    position: int
    token: int
    prob: float
    logits: torch.Tensor
    hidden: torch.Tensor | None = None


class StopCallback(Protocol):
    def __call__(self, step: DraftStep) -> bool: ...


class _CachedSession:
    """Token history plus a DynamicCache that covers all of it but `pending`."""

    def __init__(self, model, context: list[int], vocab_size: int, params: SamplingParams = SamplingParams()):
        if not context:
            raise ModelError("context is empty: a session needs at least one token")
        self.model = model
        self.vocab_size = vocab_size
        self.params = params
        self.tokens: list[int] = list(context)
        self.cache = DynamicCache()
        self.pending: list[int] = []
        self.device = next(model.parameters()).device
        self.tokens_fed = 0
        if len(context) > 1:
            self._forward(context[:-1], keep=1)
        self.pending = [context[-1]]

    @property
    def cached_len(self) -> int:
        return self.cache.get_seq_length()

    @torch.inference_mode()
    def _forward(self, ids: list[int], hidden: bool = False, keep: int = 1):
        """Feed `ids`; logits only for the last `keep` positions (0 = none needed)."""
        self.tokens_fed += len(ids)
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        kwargs = {_cache_kwarg(self.model): self.cache}
        return self.model(input_ids=x, use_cache=True, output_hidden_states=hidden,
                          logits_to_keep=keep, **kwargs)

    def _crop_to(self, length: int) -> None:
        drop = self.cached_len - length
        if drop > 0:
            self.cache.crop(-drop)


class DraftSession(_CachedSession):
    """Edge side: drafts up to L tokens, then applies the target's verdict."""

    def __init__(self, model, context: list[int], vocab_size: int, params: SamplingParams = SamplingParams()):
        super().__init__(model, context, vocab_size, params)
        self._last_draft: list[int] = []

    def propose(self, max_len: int, seed: int = 0, stop: StopCallback | None = None, hidden: bool = False) -> Draft:
        """Draft up to `max_len` tokens; `stop` (if any) may end the draft after each but the last.
        Without a stop rule no softmax is taken for it and no hidden states are computed; with one,
        hidden states only when `hidden` (a rule that reads DraftStep.hidden)."""
        if max_len < 0:
            raise ModelError(f"draft length must be >= 0, got {max_len}")
        if max_len == 0:  # a target-only round: nothing to draft
            self._last_draft = []
            return Draft([], seed)
        t0 = time.perf_counter()
        gen, _ = round_generators(seed)
        tokens: list[int] = []
        q_ids: list[list[int]] | None = None if self.params.greedy else []
        q_probs: list[list[float]] | None = None if self.params.greedy else []
        feed = list(self.pending)
        stopped = False
        want_hidden = hidden and stop is not None
        for pos in range(1, max_len + 1):
            out = self._forward(feed, hidden=want_hidden)
            logits = out.logits[0, -1, : self.vocab_size]
            if self.params.greedy:
                probs = torch.softmax(logits.float(), dim=-1) if stop is not None else None
                tok = int(torch.argmax(logits))
                prob = float(probs[tok]) if probs is not None else 1.0
            else:
                ids, probs = draft_distribution(logits, self.params)
                tok, prob = sample_sparse(ids, probs, gen)
                q_ids.append(ids.tolist())
                q_probs.append(probs.tolist())
            tokens.append(tok)
            if pos < max_len and stop is not None and stop(
                    DraftStep(pos, tok, prob, logits, out.hidden_states[-1][0, -1] if want_hidden else None)):
                stopped = True
                break
            feed = [tok]
        # the cache now covers pending + tokens[:-1]; the last draft token is not fed
        self._last_draft = tokens
        return Draft(tokens, seed, q_ids, q_probs, (time.perf_counter() - t0) * 1e3, stopped)

    def apply(self, verdict: Verdict) -> list[int]:
        """Keep the accepted drafts, append the target's token; returns the new tokens."""
        drafted = self._last_draft
        a = verdict.accepted
        if not 0 <= a <= len(drafted):
            raise ModelError(f"verdict accepts {a} tokens of a {len(drafted)}-token draft")
        new = drafted[:a] + [verdict.next_token]
        if not drafted:  # target-only round: the target's token joins the pending ones
            self.pending = [*self.pending, verdict.next_token]
        elif a < len(drafted):  # the cache covers every old token plus drafted[:-1]
            self._crop_to(len(self.tokens) + a)
            self.pending = [verdict.next_token]
        else:  # the last draft token was never fed
            self.pending = [drafted[-1], verdict.next_token]
        self.tokens.extend(new)
        self._last_draft = []
        return new


def check_draft(draft: Draft, params: SamplingParams) -> None:
    """ModelError unless `draft` can be verified under `params` (checked before any compute). A tree's
    candidates are the draft's top-c tokens, each q a one-hot: no distributions travel with it."""
    if not params.greedy and draft.tokens and draft.parents is None and (draft.q_ids is None or draft.q_probs is None):
        raise ModelError("sampled verification needs the draft's q distribution")


def accept_draft(logits: torch.Tensor, draft: Draft, params: SamplingParams) -> tuple[int, int]:
    """The verdict on `draft` from the target's logits at its L + 1 positions ([L+1, vocab]):
    (accepted, next token). The one acceptance rule of every verify path (per request or batched),
    so greedy and sampled verdicts cannot differ between them."""
    check_draft(draft, params)
    if params.greedy:
        return accept_greedy(torch.argmax(logits, dim=-1).tolist(), list(draft.tokens))
    _, gen = round_generators(draft.seed)
    p = target_probs(logits.float(), params)
    return accept_sampled(p, list(draft.tokens), draft.q_ids or [], draft.q_probs or [], gen)


class TargetSession(_CachedSession):
    """Cloud side: verifies a whole draft in one forward pass, then rolls back."""

    def verify(self, draft: Draft) -> Verdict:
        t0 = time.perf_counter()
        check_draft(draft, self.params)
        n_before = self.cached_len
        k = len(self.pending)
        out = self._forward(self.pending + list(draft.tokens), keep=len(draft) + 1)
        logits = out.logits[0, :, : self.vocab_size]  # [L+1, V]: one per draft position + bonus
        accepted, nxt = accept_draft(logits, draft, self.params)
        self._crop_to(n_before + k + accepted)
        self.tokens.extend(list(draft.tokens[:accepted]) + [nxt])
        self.pending = [nxt]
        return Verdict(accepted, nxt, (time.perf_counter() - t0) * 1e3)

    def step(self, seed: int = 0) -> Verdict:
        """One target-only decoding step (an empty draft): the reference decoder."""
        return self.verify(Draft([], seed))



def verify_round(model, vocab_size: int, state: TargetSession | None, context: list[int] | None, draft: Draft,
                 params: SamplingParams) -> tuple[TargetSession, Verdict, float]:
    """One verifier round: (re)build the session from `context` when given, then verify.
    Returns (session, verdict, prefill ms)."""
    prefill_ms = 0.0
    if context is not None or state is None:
        t0 = time.perf_counter()
        state = TargetSession(model, list(context or []), vocab_size, params)
        prefill_ms = (time.perf_counter() - t0) * 1e3
    return state, state.verify(draft), prefill_ms
