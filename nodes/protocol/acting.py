"""Which policy acts in a round, and whether and how its stop rule runs: one rule for the edge worker
and the in-process loop.

The edge acts on its policy book's policy (the controller's latest snapshot, or the book's fallback
until one arrives); a policy that raises while choosing must not fail the request, so the round acts
on the fallback (`plan_round`). A stop rule runs when the drafter has the signal it reads: the
draft's own confidence always, the acceptance head only when one is shipped for this draft
(`HeadSlot`). `auto`'s rule is optional: without a head its rounds draft fixed lengths
(RoundContext.stops False); a policy that cannot do without the head is refused before any work
(`HeadSlot.check`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Callable

from control import ControlError, Policy, RoundContext
from nodes.models.errors import ModelError
from nodes.protocol.request import EdgeRequest, RoundPlan


class HeadSlot:
    """The acceptance head, loaded once at the first round (or admission) that needs one. `load` returns
    it or raises ModelError (one line: none shipped, damaged, trained for another draft); the error is
    kept, so a missing head is looked for once."""

    def __init__(self, load: Callable[[], Any]):
        self._load = load
        self._head: Any = None
        self._error: ModelError | None = None
        self._tried = False

    @property
    def loaded(self) -> Any:
        """The head if it was loaded (None before the first use, or when there is none)."""
        return self._head

    def get(self) -> Any:
        """The head; ControlError (refusing the request) when this draft has none."""
        if not self._tried:
            self._tried = True
            try:
                self._head = self._load()
            except ModelError as exc:
                self._error = exc
        if self._error is not None:
            raise ControlError(f"cannot serve a policy that needs the acceptance head: {self._error}")
        return self._head

    def check(self, policy: Policy) -> None:
        """ControlError when `policy` cannot act here: it needs the head, and there is none."""
        if policy.stop_signal == "acceptance" and not policy.stop_optional:
            self.get()

    def stops(self, policy: Policy) -> bool:
        """Whether the drafter runs `policy`'s stop rule (the round's RoundContext.stops, which a policy
        with an optional rule chooses its length by)."""
        if policy.stop_signal == "confidence":
            return True
        if policy.stop_signal != "acceptance":
            return False
        try:
            return self.get() is not None
        except ControlError:
            return False

    def stop_rule(self, policy: Policy, ctx: RoundContext):
        """(the draft's stop callback for this round or None, whether it reads hidden states)."""
        head = self.get() if ctx.stops and policy.stop_signal == "acceptance" else None
        return stop_rule(policy, ctx, head)


@dataclass
class Acting:
    """The policy a round acts on, the version it stands for, and its plan; `error` says why the
    policy asked for could not choose (the round then acts on the fallback)."""

    policy: Policy
    version: int
    plan: RoundPlan
    error: str | None = None


def plan_round(r: EdgeRequest, policy: Policy, version: int, ctx: RoundContext, heads: HeadSlot,
               fallback: Policy | None = None) -> Acting:
    """The round's plan from `policy` told `ctx` (its `stops` set by what this drafter has). A policy
    that raises acts through `fallback` at version 0; without a fallback the error propagates."""
    try:
        return Acting(policy, version, r.plan(policy, version, replace(ctx, stops=heads.stops(policy))))
    except Exception as exc:
        if fallback is None:
            raise
        plan = r.plan(fallback, 0, replace(ctx, stops=heads.stops(fallback)))
        return Acting(fallback, 0, plan, f"{type(exc).__name__}: {str(exc)[:200]}")


def stop_rule(policy: Policy, ctx: RoundContext, head: Any = None):
    """(the draft's stop callback for `policy` this round, or None; whether it reads hidden states).

    policy.stop_signal None, or a round whose ctx.stops is False (an optional rule with no head): no
    callback (no softmax, no hidden states); "confidence": should_stop gets the draft's probability of
    the token; "acceptance": the head's predicted acceptance probability.

    The callback acts on a shallow copy of the policy made for this round: a rule that keeps state
    within a round (specdec++'s running product) then keeps it per request, also when the edge
    drafts several requests' rounds step by step in one batch (their calls interleave)."""
    signal = policy.stop_signal
    if signal == "acceptance" and head is None and (ctx.stops or not policy.stop_optional):
        raise ModelError(f"policy '{policy.spec}' needs the acceptance head, and none is loaded")
    if signal is None or not ctx.stops:
        return None, False
    policy = copy.copy(policy)
    if signal == "confidence":
        return StopRule(policy, ctx, lambda step: step.prob), False
    if signal == "acceptance":
        return StopRule(policy, ctx, lambda step: head.accept_prob(step.hidden, step.logits, step.token)), True
    raise ModelError(f"policy '{policy.spec}' asks for an unknown stop signal {signal!r}")


class StopRule:
    """A round's stop callback; `scores` keeps the signal it read at each drafted position (the round's
    timing event carries them, so a run's own drafts give the best threshold in hindsight)."""

    def __init__(self, policy: Policy, ctx: RoundContext, signal: Callable[[Any], float]):
        self.policy, self.ctx, self.signal = policy, ctx, signal
        self.scores: list[float] = []

    def __call__(self, step) -> bool:
        p = float(self.signal(step))
        self.scores.append(p)
        return self.policy.should_stop(self.ctx, step.position, p)
