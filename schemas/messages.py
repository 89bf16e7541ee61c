"""Wire messages. Field names are the wire names; the README documents each one.

Flow: client -> GenerateRequest -> edge; edge -> DraftMsg -> cloud; cloud ->
VerdictMsg (or ErrorMsg) -> edge; edge -> TokenChunk* -> client (the last has
done=True); edge -> TimingEvent -> control; control -> PolicyUpdate -> edge;
client -> CancelMsg -> edges (AckMsg back).

Every number a peer sends is range-checked here, so that whatever passes
`decode` can be acted on without further type or range surprises.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas.codec import Float32Array, Int32Array, Limits, SchemaError, message
from schemas.rounds import Draft, SamplingParams, Verdict

MAX_ID_LEN = 128
MAX_SPEC_LEN = 64          # policy spec strings
MAX_STATE_LEN = 64         # channel state labels
MAX_ROUND = 1 << 31        # rounds and attempts of one request
MAX_MS = 1e7               # any duration on the wire (~2.8 h)
MAX_TREE_NODES = 64        # nodes of one draft tree (schemas/trees.py's wire limit)
MAX_POLICY_VERSION = (1 << 53) - 1  # events applied to one learner; beyond this a version is forged
MAX_SEQ = (1 << 63) - 1
MAX_TOP_K = 4096

# error codes (ErrorMsg.code); the README says what each asks the receiver to do
BAD_MESSAGE, TOO_LARGE, VERSION = "bad_message", "too_large", "version"
RESEND_CONTEXT, OVERLOADED, DRAINING, CONFLICT = "resend_context", "overloaded", "draining", "conflict"
TOO_LONG, DUPLICATE, NO_VERIFIER, DEADLINE = "too_long", "duplicate", "no_verifier", "deadline"
CANCELLED, UNAVAILABLE, INTERNAL = "cancelled", "unavailable", "internal"
VOIDED = "voided"  # a round drafted ahead whose basis the verdict before it broke: dropped without compute
ERROR_CODES = (BAD_MESSAGE, TOO_LARGE, VERSION, RESEND_CONTEXT, OVERLOADED, DRAINING, CONFLICT, TOO_LONG,
               DUPLICATE, NO_VERIFIER, DEADLINE, CANCELLED, UNAVAILABLE, INTERNAL, VOIDED)


ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def valid_id(value: str) -> bool:
    """Ids name subjects and KV keys: 1..128 ASCII letters, digits, '-' or '_'."""
    return 0 < len(value) <= MAX_ID_LEN and all(c in ID_CHARS for c in value)


def _check_id(value: str, name: str) -> None:
    if not valid_id(value):
        raise SchemaError(f"{name} must be 1..{MAX_ID_LEN} ASCII letters, digits, '-' or '_'")


def _check_tokens(ids: list[int], limits: Limits, name: str) -> None:
    for t in ids:
        if not 0 <= t < limits.vocab_size:
            raise SchemaError(f"{name}: token id {t} outside the vocabulary [0, {limits.vocab_size})")


def _check_sampling(temperature: float, top_p: float) -> None:
    if not 0 <= temperature <= 100:
        raise SchemaError("temperature must be in [0, 100]")
    if not 0 < top_p <= 1:
        raise SchemaError("top_p must be in (0, 1]")


def _check_round(where: str, rnd: int, attempt: int) -> None:
    if not (0 <= rnd < MAX_ROUND and 0 <= attempt < MAX_ROUND):
        raise SchemaError(f"{where}: round and attempt must be in [0, {MAX_ROUND})")


def _check_ms(where: str, **values: float) -> None:
    for name, v in values.items():
        if not 0.0 <= v <= MAX_MS:
            raise SchemaError(f"{where}: {name} must be in [0, {MAX_MS:g}] ms")


def _check_text(where: str, value: str | None, limit: int) -> None:
    if value is not None and len(value) > limit:
        raise SchemaError(f"{where} is longer than {limit} characters")


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
    deadline_s: float = 0.0  # the client stops waiting after this many seconds (0: the edge's maximum)

    def validate(self, limits: Limits) -> None:
        _check_id(self.request_id, "request_id")
        if not self.prompt and not self.prompt_ids:
            raise SchemaError("generate: prompt is empty")
        _check_text("generate.prompt", self.prompt, limits.max_prompt_chars)
        _check_text("generate.policy", self.policy, MAX_SPEC_LEN)
        if not 0.0 <= self.deadline_s <= MAX_MS / 1e3:
            raise SchemaError("generate: deadline_s must be >= 0")
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
    session: str = ""                    # the edge's nonce for this request: a reused request id never
                                         # meets the session of an earlier request with that id

    def validate(self, limits: Limits) -> None:
        _check_id(self.request_id, "request_id")
        _check_id(self.edge_id, "edge_id")
        if self.session and not valid_id(self.session):
            raise SchemaError("draft: session must be 1..128 ASCII letters, digits, '-' or '_'")
        _check_round("draft", self.round, self.attempt)
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise SchemaError(f"draft: top_k must be in [0, {MAX_TOP_K}]")
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
                   params: SamplingParams, context: list[int] | None = None, final: bool = False,
                   session: str = "") -> "DraftMsg":
        flat_ids = flat_probs = None
        if d.q_ids is not None and d.q_probs is not None:
            flat_ids = Int32Array(t for row in d.q_ids for t in row)
            flat_probs = Float32Array(p for row in d.q_probs for p in row)
        return cls(request_id, round, attempt, edge_id, Int32Array(d.tokens), d.seed, params.temperature,
                   params.top_p, params.top_k if flat_ids is not None else 0, flat_ids, flat_probs,
                   None if context is None else Int32Array(context), final, session)


@message("verdict")
@dataclass
class VerdictMsg:
    request_id: str
    round: int
    attempt: int
    accepted: int
    next_token: int
    verify_ms: float              # the verifier's time for this round (its device's, when emulated)
    queue_ms: float
    verifier_id: str
    verify_real_ms: float = 0.0   # what this machine really spent (= verify_ms without emulation)
    emulated: bool = False        # verify_ms is an emulated device's time
    path: Int32Array | None = None  # a tree round's accepted node indices (root's child first); chains: absent

    OMIT_WHEN_NONE = ("path",)  # a chain verdict stays byte-for-byte what a chain-only peer decodes

    def validate(self, limits: Limits) -> None:
        _check_id(self.request_id, "request_id")
        _check_id(self.verifier_id, "verifier_id")
        _check_round("verdict", self.round, self.attempt)
        if self.accepted < 0 or self.accepted > limits.max_draft_length:
            raise SchemaError("verdict: accepted out of range")
        if self.path is not None and len(self.path) != self.accepted:
            raise SchemaError(f"verdict: a path of {len(self.path)} nodes for {self.accepted} accepted tokens")
        _check_tokens([self.next_token], limits, "verdict.next_token")
        _check_ms("verdict", verify_ms=self.verify_ms, queue_ms=self.queue_ms, verify_real_ms=self.verify_real_ms)

    def to_verdict(self) -> Verdict:
        return Verdict(self.accepted, self.next_token, self.verify_ms,
                       None if self.path is None else list(self.path))


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
    full_ids: Int32Array | None = None  # the whole output so far: on the last chunk and on a resync chunk,
    full_text: str | None = None        # so a chunk lost in a broker outage never loses tokens
    resync: bool = False                # an answer to `resume`: full_ids/full_text are the state at `seq`

    def validate(self, limits: Limits) -> None:
        _check_id(self.request_id, "request_id")
        if not 0 <= self.seq < MAX_ROUND:
            raise SchemaError("chunk: seq out of range")


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
    link_ms: float = 0.0     # emulated link time actually slept (~ 2 x delay_ms)
    stall_ms: float = 0.0    # time lost to failed attempts and backoff (not in round_ms)
    context_resent: bool = False
    context_len: int = 0
    draft_real_ms: float = 0.0   # what this machine really spent drafting / verifying; draft_ms and
    verify_real_ms: float = 0.0  # verify_ms are the emulated devices' times when `emulated`
    emulated: bool = False
    stop_scores: Float32Array | None = None  # what a per-token stop rule read after each drafted token it was asked about
    told_delay_ms: float | None = None  # the one-way delay the policy was told before the round (None: not sent)
    # A tree round: the depth of the tree it sent (`length` is then its node count, `accepted` the
    # accepted path's length: not a chain's). None on chain rounds, and then absent on the wire.
    tree_depth: int | None = None
    # True: a start-up calibration round (edge --calibrate-rounds): its length was not the policy's
    # choice, so a learner takes only its compute (Policy.calibrate). None on served rounds, then absent.
    calibration: bool | None = None

    OMIT_WHEN_NONE = ("tree_depth", "calibration")  # a chain round's event stays what an older reader decodes

    def validate(self, limits: Limits) -> None:
        _check_id(self.edge_id, "edge_id")
        _check_id(self.request_id, "request_id")
        _check_round("timing", self.round, self.attempt)
        if self.tree_depth is None:
            if not 0 <= self.accepted <= self.length <= limits.max_draft_length:
                raise SchemaError("timing: need 0 <= accepted <= length <= max draft length")
        elif type(self.tree_depth) is not int or not (
                0 <= self.accepted <= self.tree_depth <= self.length <= MAX_TREE_NODES):
            raise SchemaError(f"timing: a tree round needs 0 <= accepted <= tree_depth <= length (nodes) "
                              f"<= {MAX_TREE_NODES}")
        if not 0 <= self.tokens <= self.accepted + 1:
            raise SchemaError("timing: tokens must be in [0, accepted + 1]")
        _check_ms("timing", round_ms=self.round_ms, draft_ms=self.draft_ms, verify_ms=self.verify_ms,
                  queue_ms=self.queue_ms, network_ms=self.network_ms, delay_ms=self.delay_ms,
                  edge_queue_ms=self.edge_queue_ms, link_ms=self.link_ms, stall_ms=self.stall_ms,
                  draft_real_ms=self.draft_real_ms, verify_real_ms=self.verify_real_ms)
        if self.told_delay_ms is not None:
            _check_ms("timing", told_delay_ms=self.told_delay_ms)
        if not self.policy or len(self.policy) > MAX_SPEC_LEN:
            raise SchemaError(f"timing: policy must be 1..{MAX_SPEC_LEN} characters")
        _check_text("timing.channel_state", self.channel_state, MAX_STATE_LEN)
        if not (0 <= self.policy_version <= MAX_POLICY_VERSION and 0 <= self.seq <= MAX_SEQ
                and 0 <= self.context_len <= limits.max_context_tokens):
            raise SchemaError("timing: policy_version, seq or context_len out of range")
        if self.calibration is not None and type(self.calibration) is not bool:
            raise SchemaError("timing: calibration must be a boolean")
        if self.stop_scores is not None and (len(self.stop_scores) > self.length
                                             or not all(0.0 <= p <= 1.0 for p in self.stop_scores)):
            raise SchemaError("timing: stop_scores must be at most `length` values in [0, 1]")


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
    stream: str = ""  # which incarnation of the timing stream last_seq counts in (its creation time)

    def validate(self, limits: Limits) -> None:
        _check_id(self.edge_id, "edge_id")
        if not self.policy or len(self.policy) > MAX_SPEC_LEN:
            raise SchemaError(f"policy: spec must be 1..{MAX_SPEC_LEN} characters")
        if not 1 <= self.version <= MAX_POLICY_VERSION:
            raise SchemaError(f"policy: version must be in [1, {MAX_POLICY_VERSION}]")
        if not 0 <= self.last_seq <= MAX_SEQ:
            raise SchemaError("policy: last_seq out of range")
        _check_text("policy.stream", self.stream, 64)


@message("cancel")
@dataclass
class CancelMsg:
    """Stop a generation. `inbox` is the reply subject of the generate request: only the client
    that made the request knows it, so nobody else can cancel it by guessing a request id."""

    request_id: str
    inbox: str
    reason: str = "client"

    def validate(self, limits: Limits) -> None:
        _check_id(self.request_id, "request_id")
        if not self.inbox or len(self.inbox) > 256:
            raise SchemaError("cancel: inbox must be 1..256 characters")
        _check_text("cancel.reason", self.reason, 64)


@message("resume")
@dataclass
class ResumeMsg:
    """A client that may have missed chunks (it reconnected, or saw a gap) asks for the stream's
    state; the edge holding the request (or that just finished it) answers with a resync chunk.
    `inbox` authenticates the client, as for `cancel`."""

    request_id: str
    inbox: str

    def validate(self, limits: Limits) -> None:
        _check_id(self.request_id, "request_id")
        if not self.inbox or len(self.inbox) > 256:
            raise SchemaError("resume: inbox must be 1..256 characters")


@message("ack")
@dataclass
class AckMsg:
    """The answer to a message that needs no other reply (a final draft, a cancel)."""

    request_id: str
    what: str

    def validate(self, limits: Limits) -> None:
        _check_id(self.request_id, "request_id")
        _check_text("ack.what", self.what, 64)


@message("error")
@dataclass
class ErrorMsg:
    code: str      # one of ERROR_CODES
    message: str
    request_id: str | None = None

    def validate(self, limits: Limits) -> None:
        _check_text("error.code", self.code, 32)
        _check_text("error.message", self.message, 2000)


ALIVE_ROLES = ("edge", "verifier")


@message("alive")
@dataclass
class AliveMsg:
    """A worker's heartbeat, published every second on `subjects.edge_alive(id)` /
    `subjects.verifier_alive(id)`: peers learn in seconds that it is gone (it stops) or stalled
    (SIGSTOP: it stops too), without waiting for the timeouts that bound an honest slow request.
    `load`: an edge's live requests, a verifier's held sessions. `verifiers`: for an edge, the
    verifiers it heard from recently (a gateway is ready only when this is > 0)."""

    role: str
    node_id: str
    seq: int
    load: int = 0
    draining: bool = False
    verifiers: int = 0

    def validate(self, limits: Limits) -> None:
        if self.role not in ALIVE_ROLES:
            raise SchemaError(f"alive: role must be one of {ALIVE_ROLES}")
        _check_id(self.node_id, "node_id")
        if not (0 <= self.seq <= MAX_SEQ and 0 <= self.load < MAX_ROUND and 0 <= self.verifiers < MAX_ROUND):
            raise SchemaError("alive: seq, load or verifiers out of range")
