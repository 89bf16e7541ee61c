"""Plain data exchanged by the draft and target halves of one speculative round.

These cross process boundaries unchanged (the codec packs them for the wire),
so they hold only ints, floats and lists — no tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_DRAFT_TOP_K = 64


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy; top_p applies to the target's distribution."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = DEFAULT_DRAFT_TOP_K  # draft truncation: q is sent sparsely

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Draft:
    """Draft tokens plus the exact (sparse, top-k) q each one was sampled from."""

    tokens: list[int]
    seed: int = 0
    q_ids: list[list[int]] | None = None
    q_probs: list[list[float]] | None = None
    draft_ms: float = 0.0
    stopped_early: bool = False
    stop_scores: list[float] | None = None  # the stop rule's signal after each drafted token it was asked about
                                            # (all but the last of a full-length draft)
    parents: list[int] | None = None  # a tree draft: node i's parent (-1 = the last context token); None: a chain

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class Verdict:
    """accepted draft tokens (0..L) and the target's own next token."""

    accepted: int
    next_token: int
    verify_ms: float = 0.0
    path: list[int] | None = None  # a tree round: the accepted node indices, root's child first (len = accepted)


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    rounds: int
    accepted_per_round: list[int] = field(default_factory=list)
    lengths_per_round: list[int] = field(default_factory=list)
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    finish_reason: str = "length"


def round_seed(request_seed: int, round_no: int) -> int:
    """Seed of one round: fixed by (request seed, round), so a retried round redraws the same."""
    x = (request_seed * 0x9E3779B97F4A7C15 + round_no * 0xBF58476D1CE4E5B9 + 1) & 0xFFFF_FFFF_FFFF_FFFF
    x ^= x >> 31
    return x & 0x7FFF_FFFF_FFFF_FFFF
