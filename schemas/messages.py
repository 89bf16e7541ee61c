"""Wire messages. Field names are the wire names; the README documents each one.

Flow: client -> GenerateRequest -> edge; edge -> DraftMsg -> cloud; cloud ->
VerdictMsg (or ErrorMsg) -> edge; edge -> TokenChunk* -> client (the last has
done=True); edge -> TimingEvent -> control; control -> PolicyUpdate -> edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas.codec import Float32Array, Int32Array, Limits, SchemaError, message
from schemas.rounds import Draft, SamplingParams, Verdict

MAX_ID_LEN = 128


def _check_id(value: str, name: str) -> None:
    if not value or len(value) > MAX_ID_LEN or any(c in value for c in " .*>\t\r\n"):
        raise SchemaError(f"{name} must be 1..{MAX_ID_LEN} characters without spaces, '.', '*' or '>'")


def _check_tokens(ids: list[int], limits: Limits, name: str) -> None:
    for t in ids:
        if not 0 <= t < limits.vocab_size:
            raise SchemaError(f"{name}: token id {t} outside the vocabulary [0, {limits.vocab_size})")


def _check_sampling(temperature: float, top_p: float) -> None:
    if temperature < 0:
        raise SchemaError("temperature must be >= 0")
    if not 0 < top_p <= 1:
        raise SchemaError("top_p must be in (0, 1]")


@message("generate")
@dataclass
class GenerateRequest:
    request_id: str
    prompt: str = ""
    prompt_ids: Int32Array | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    policy: str | None = None

    def validate(self, limits: Limits) -> None:
        _check_id(self.request_id, "request_id")
        if not self.prompt and not self.prompt_ids:
            raise SchemaError("generate: prompt is empty")
        if self.prompt_ids is not None:
            _check_tokens(self.prompt_ids, limits, "generate.prompt_ids")
            if len(self.prompt_ids) > limits.max_context_tokens:
                raise SchemaError(f"generate: prompt longer than {limits.max_context_tokens} tokens")
        if not 1 <= self.max_new_tokens <= limits.max_context_tokens:
            raise SchemaError(f"generate: max_new_tokens must be in 1..{limits.max_context_tokens}")
        _check_sampling(self.temperature, self.top_p)


@message("draft")
@dataclass
class DraftMsg:
    request_id: str
    round: int
    attempt: int
    edge_id: str
    tokens: Int32Array
    seed: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    q_ids: Int32Array | None = None      # L*top_k, row-major
    q_probs: Float32Array | None = None  # L*top_k
    context: Int32Array | None = None    # full context: first round, or a resend
    final: bool = False                  # the edge will send no more rounds: end the session

    def validate(self, limits: Limits) -> None:
        _check_id(self.request_id, "request_id")
        _check_id(self.edge_id, "edge_id")
        if self.round < 0 or self.attempt < 0:
            raise SchemaError("draft: round and attempt must be >= 0")
        if len(self.tokens) > limits.max_draft_length:
            raise SchemaError(f"draft: {len(self.tokens)} tokens exceed the maximum draft length {limits.max_draft_length}")
        _check_tokens(self.tokens, limits, "draft.tokens")
        _check_sampling(self.temperature, self.top_p)
        if self.context is not None:
            if not self.context:
                raise SchemaError("draft: context is empty")
            if len(self.context) > limits.max_context_tokens:
                raise SchemaError(f"draft: context longer than {limits.max_context_tokens} tokens")
            _check_tokens(self.context, limits, "draft.context")
        if self.temperature > 0 and self.tokens:
            n = len(self.tokens) * self.top_k
            if self.top_k < 1 or self.q_ids is None or self.q_probs is None or len(self.q_ids) != n or len(self.q_probs) != n:
                raise SchemaError("draft: sampled drafts need q_ids and q_probs of length L*top_k")
            _check_tokens(self.q_ids, limits, "draft.q_ids")
            if any(not 0.0 <= p <= 1.0 for p in self.q_probs):
                raise SchemaError("draft: q_probs must lie in [0, 1]")

    @property
    def params(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, max(self.top_k, 1))

    def to_draft(self) -> Draft:
        k = self.top_k
        q_ids = q_probs = None
        if self.q_ids is not None and self.q_probs is not None and k:
            q_ids = [list(self.q_ids[i * k : (i + 1) * k]) for i in range(len(self.tokens))]
            q_probs = [list(self.q_probs[i * k : (i + 1) * k]) for i in range(len(self.tokens))]
        return Draft(list(self.tokens), self.seed, q_ids, q_probs)

    @classmethod
    def from_draft(cls, d: Draft, *, request_id: str, round: int, attempt: int, edge_id: str,
                   params: SamplingParams, context: list[int] | None = None, final: bool = False) -> "DraftMsg":
        flat_ids = flat_probs = None
        if d.q_ids is not None and d.q_probs is not None:
            flat_ids = Int32Array(t for row in d.q_ids for t in row)
            flat_probs = Float32Array(p for row in d.q_probs for p in row)
        return cls(request_id, round, attempt, edge_id, Int32Array(d.tokens), d.seed, params.temperature,
                   params.top_p, params.top_k if flat_ids is not None else 0, flat_ids, flat_probs,
                   None if context is None else Int32Array(context), final)


@message("verdict")
@dataclass
class VerdictMsg:
    request_id: str
    round: int
    attempt: int
    accepted: int
    next_token: int
    verify_ms: float
    queue_ms: float
    verifier_id: str

    def validate(self, limits: Limits) -> None:
        _check_id(self.request_id, "request_id")
        if self.accepted < 0 or self.accepted > limits.max_draft_length:
            raise SchemaError("verdict: accepted out of range")
        _check_tokens([self.next_token], limits, "verdict.next_token")
        if self.verify_ms < 0 or self.queue_ms < 0:
            raise SchemaError("verdict: times must be >= 0")

    def to_verdict(self) -> Verdict:
        return Verdict(self.accepted, self.next_token, self.verify_ms)


@message("chunk")
@dataclass
class TokenChunk:
    request_id: str
    seq: int
    token_ids: Int32Array
    text: str
    done: bool = False
    finish_reason: str | None = None  # "eos" | "length" | "error" on the last chunk
    rounds: int = 0
    tokens: int = 0
    full_ids: Int32Array | None = None  # last chunk only: the whole output, so a chunk lost in
    full_text: str | None = None        # a broker outage never loses tokens


@message("timing")
@dataclass
class TimingEvent:
    edge_id: str
    request_id: str
    round: int
    attempt: int
    length: int
    accepted: int
    round_ms: float
    draft_ms: float
    verify_ms: float
    queue_ms: float
    network_ms: float      # round - edge_queue - draft - verify - queue (measured; one-way delay ~ network/2)
    delay_ms: float        # emulated one-way delay of this round (0 without emulation)
    policy: str
    policy_version: int
    verifier_id: str = ""
    channel_state: str | None = None
    seq: int = 0
    tokens: int = 0          # tokens this round emitted to the client (EOS and the limit cut the last round)
    edge_queue_ms: float = 0.0

    def validate(self, limits: Limits) -> None:
        _check_id(self.edge_id, "edge_id")
        if not 0 <= self.accepted <= self.length <= limits.max_draft_length:
            raise SchemaError("timing: need 0 <= accepted <= length <= max draft length")
        if self.round_ms < 0 or self.delay_ms < 0:
            raise SchemaError("timing: times must be >= 0")


@message("policy")
@dataclass
class PolicyUpdate:
    """A learner's snapshot. `version` = events applied so far (monotonic per edge x policy);
    `last_seq` = JetStream sequence of the last applied event (controller bookkeeping)."""

    edge_id: str
    policy: str
    version: int
    snapshot: dict = field(default_factory=dict)
    last_seq: int = 0

    def validate(self, limits: Limits) -> None:
        _check_id(self.edge_id, "edge_id")
        if self.version < 0 or self.last_seq < 0:
            raise SchemaError("policy: version and last_seq must be >= 0")


@message("error")
@dataclass
class ErrorMsg:
    code: str      # bad_message | too_large | version | unknown_request | resend_context | overloaded | internal
    message: str
    request_id: str | None = None
