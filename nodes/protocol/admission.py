"""What an edge admits: every bound checked before any work (tokenizing, drafting) starts.

A request over a bound gets one clear error reply naming the bound and the
value; an edge that is full answers `overloaded` at once instead of letting
requests wait unseen.
"""
from __future__ import annotations

from dataclasses import dataclass

from schemas.messages import BAD_MESSAGE, DUPLICATE, OVERLOADED, TOO_LONG, UNAVAILABLE, GenerateRequest


@dataclass(frozen=True)
class EdgeLimits:
    max_active: int = 64             # requests generating at once
    max_queued: int = 256            # admitted requests waiting for an active slot
    max_prompt_tokens: int = 4096
    max_new_tokens: int = 2048
    max_request_s: float = 600.0     # no request runs longer (a request's own deadline may be shorter)
    max_context_tokens: int | None = None  # prompt + max_new_tokens must fit (None: unchecked; serve_edge
                                           # sets the loaded model's max_position_embeddings)

    def __post_init__(self) -> None:
        for name in ("max_active", "max_prompt_tokens", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_queued < 0 or not self.max_request_s > 0:
            raise ValueError("max_queued must be >= 0 and max_request_s > 0")

    @property
    def max_prompt_chars(self) -> int:
        """A prompt string longer than this cannot fit (no tokenizer packs 16 characters into a token)."""
        return 16 * self.max_prompt_tokens


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str


def admit_generate(req: GenerateRequest, limits: EdgeLimits, live: int, draining: bool,
                   duplicate: bool) -> Refusal | None:
    """Checks that need no tokenizer: capacity, duplicates, length limits."""
    if draining:
        return Refusal(UNAVAILABLE, "edge is shutting down: send the request again (another edge will take it)")
    if duplicate:
        return Refusal(DUPLICATE, f"request {req.request_id} is already being generated on this edge")
    if live >= limits.max_active + limits.max_queued:
        return Refusal(OVERLOADED, f"edge holds {live} requests ({limits.max_active} active + "
                                   f"{limits.max_queued} queued at most): try again later")
    if req.max_new_tokens > limits.max_new_tokens:
        return Refusal(TOO_LONG, f"max_new_tokens {req.max_new_tokens} exceeds this edge's limit "
                                 f"{limits.max_new_tokens}")
    if limits.max_context_tokens is not None and req.max_new_tokens >= limits.max_context_tokens:
        return _past_context(max(len(req.prompt_ids or ()), 1), req.max_new_tokens, limits.max_context_tokens)
    if len(req.prompt) > limits.max_prompt_chars:
        return Refusal(TOO_LONG, f"prompt of {len(req.prompt)} characters exceeds this edge's limit "
                                 f"({limits.max_prompt_tokens} tokens)")
    if req.prompt_ids is not None and len(req.prompt_ids) > limits.max_prompt_tokens:
        return Refusal(TOO_LONG, f"prompt of {len(req.prompt_ids)} tokens exceeds this edge's limit "
                                 f"{limits.max_prompt_tokens}")
    return None


def _past_context(prompt: int, new: int, context: int) -> Refusal:
    return Refusal(TOO_LONG, f"prompt ({prompt} tokens) + max_new_tokens ({new}) exceeds the model's context "
                             f"of {context} tokens")


def check_prompt_tokens(n: int, limits: EdgeLimits, max_new_tokens: int = 0) -> Refusal | None:
    """Checks once the prompt is tokenized: not empty, within the prompt limit, and with the new tokens
    inside the model's context (past it, positions the model was never trained on)."""
    if n == 0:
        return Refusal(BAD_MESSAGE, "prompt encodes to no tokens")
    if n > limits.max_prompt_tokens:
        return Refusal(TOO_LONG, f"prompt of {n} tokens exceeds this edge's limit {limits.max_prompt_tokens}")
    if limits.max_context_tokens is not None and n + max_new_tokens > limits.max_context_tokens:
        return _past_context(n, max_new_tokens, limits.max_context_tokens)
    return None


def deadline_s(req: GenerateRequest, limits: EdgeLimits) -> float:
    """How long this request may run on the edge: its own deadline, capped by the edge's."""
    return min(req.deadline_s, limits.max_request_s) if req.deadline_s > 0 else limits.max_request_s


class EarlyCancels:
    """Cancels that arrived before their request: an edge reads `cancel` and `generate` on separate
    subscriptions (each with its own task), so a client's cancel sent right behind its request can be
    handled first and find nothing to stop; the request would then run to its end for nobody. The
    (request id, reply inbox) pair is kept for `keep_s` so the generate that follows is refused as
    cancelled; bounded by `max_kept` (oldest first out), since any client can send cancels."""

    def __init__(self, keep_s: float = 30.0, max_kept: int = 4096):
        self.keep_s, self.max_kept = keep_s, max_kept
        self._kept: dict[tuple[str, str], float] = {}  # insertion order = arrival order

    def add(self, request_id: str, inbox: str, now: float) -> None:
        self._expire(now)
        self._kept.pop((request_id, inbox), None)
        self._kept[(request_id, inbox)] = now
        while len(self._kept) > self.max_kept:
            del self._kept[next(iter(self._kept))]

    def take(self, request_id: str, inbox: str | None, now: float) -> bool:
        """True (once) when this request was cancelled before it arrived."""
        self._expire(now)
        return inbox is not None and self._kept.pop((request_id, inbox), None) is not None

    def __len__(self) -> int:
        return len(self._kept)

    def _expire(self, now: float) -> None:
        while self._kept and now - next(iter(self._kept.values())) > self.keep_s:
            del self._kept[next(iter(self._kept))]
