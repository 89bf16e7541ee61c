"""Proactive drafting with R rounds in flight, in-process, over a link with a real one-way delay.

The edge (the calling thread) drafts one stream: round r's L tokens, then the draft's own
prediction p at L+1, then round r+1's L tokens after p, and so on; it keeps drafting the next round
while up to R rounds are in flight, and sends it the moment the window has room. The cloud (a
thread) verifies rounds in order. A round is kept when its verdict accepts all L tokens and its next
token equals p (nodes/protocol/pipelining.py); the first round that is not kept voids the rounds
built on it: the cloud drops them without compute, the edge crops its draft cache to the verdict and
redrafts from there. Both directions of the link hold each message for `one_way_ms` of wall-clock
time (threads sleep). torch releases the interpreter lock inside its kernels only; models as small
as the bundled pair spend most of a forward in Python, so here the edge's drafting and the cloud's
verify partly take turns, where on two machines they would overlap. Output is the target's: greedy equals target-only, sampling keeps the target's
distribution (every emitted token is a verdict's, drawn by speculative sampling on a draft sent with
its true q; p is kept only when the target's own draw equals it).

With `tree` (a control.trees.spine shape: `width` candidates per depth, the rank-1 one extended)
each round is a draft tree verified in one target forward (nodes/models/tree_verify.py); the
spine is the stream, and a round is kept when the whole spine is accepted (only the spine reaches
full depth) and the next token equals the prediction after it. A miss where a rank-2..w candidate
matches still costs the round trip, but the round brings that candidate and the target's token
after it back.

A verdict lost on the link is recovered by resending the oldest round in flight after
`resend_after_s`; the cloud answers a round it already verified from its record, and the edge
applies each verdict once (duplicates dropped).
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from control.trees import Tree
from nodes.models.errors import ModelError
from nodes.models.loading import ModelPair
from nodes.models.sampling import draft_distribution, round_generators, sample_sparse
from nodes.models.sessions import TargetSession, _cache_kwarg
from nodes.models.tree_verify import TreeCache, draft_tree, verify_tree
from nodes.protocol.pipelining import Applied, Basis, CloudWindow, EdgeWindow, KeepRule, Replay, Stale
from nodes.protocol.request import finish
from schemas.rounds import Draft, SamplingParams, round_seed

NO_PREDICTION = -1  # a round drafted without a prediction after it (no round will be built on it)


@dataclass(frozen=True)
class Faults:
    """Indexes (0-based, in sending order) of verdict messages the link drops or delivers twice."""

    drop_verdicts: frozenset[int] = frozenset()
    duplicate_verdicts: frozenset[int] = frozenset()


class DelayLink:
    """One direction of a link: each message is delivered `one_way_ms` after it was sent, in order."""

    def __init__(self, one_way_ms: float, drop: frozenset[int] = frozenset(),
                 duplicate: frozenset[int] = frozenset()) -> None:
        self.delay_s = one_way_ms / 1e3
        self.drop, self.duplicate = drop, duplicate
        self._q: collections.deque[tuple[float, object]] = collections.deque()
        self._cv = threading.Condition()
        self.sent = 0

    def send(self, msg: object) -> None:
        with self._cv:
            n, self.sent = self.sent, self.sent + 1
            if n in self.drop:
                return
            at = time.monotonic() + self.delay_s
            self._q.append((at, msg))
            if n in self.duplicate:
                self._q.append((at, msg))
            self._cv.notify_all()

    def recv(self, timeout_s: float | None) -> object | None:
        """The next delivered message, or None when none is delivered within `timeout_s` (0: poll)."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cv:
            while True:
                now = time.monotonic()
                if self._q and self._q[0][0] <= now:
                    return self._q.popleft()[1]
                wake = self._q[0][0] if self._q else None
                if end is not None:
                    if now >= end:
                        return None
                    wake = end if wake is None else min(wake, end)
                self._cv.wait(None if wake is None else wake - now)


@dataclass(frozen=True)
class RoundMsg:
    round_id: int
    basis: Basis
    draft: Draft  # a chain's tokens, or a tree's nodes 1..n (node 0 is the context's last token)
    tree: Tree | None = None


@dataclass(frozen=True)
class VerdictMsg:
    round_id: int
    accepted: int  # tokens of the accepted path (chain: prefix; tree: path length)
    next_token: int
    emitted: tuple[int, ...]  # the accepted path's tokens + next_token


CLOSE = object()


def position_generator(seed: int, position: int) -> torch.Generator:
    """The draft's random stream at one stream position. Keyed by position, not by round or by
    time, so the sample does not depend on how many rounds were in flight: a position drafted again
    after a miss reuses a draw that decided nothing yet (tokens past a rejection, or in a voided
    round, are never judged)."""
    return round_generators(round_seed(seed, position))[0]


class DraftStream(TreeCache):
    """The edge's draft model over one token stream (verified context + speculative drafts); the
    cache covers a prefix of the stream, and each step feeds what it does not cover yet. A
    TreeCache (its tree-masked feed) so that tree rounds are drafted on the same cache; chain steps
    use the model's plain causal forward."""

    def __init__(self, model, context: list[int], vocab_size: int, params: SamplingParams, seed: int):
        # not TreeCache.__init__: the prompt is fed by the first draft step, causally
        self.model, self.vocab_size, self.params = model, vocab_size, params
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.eager = getattr(model.config, "_attn_implementation", "sdpa") == "eager"
        self.cache = DynamicCache()
        self.tokens = list(context)
        self.forwards = 0
        self._prefix = 0
        self.seed = seed

    @torch.inference_mode()
    def sync(self) -> None:
        """Feed what the cache lacks but the last token (the state a tree round starts from)."""
        feed = self.tokens[self.cached_len:-1]
        if feed:
            x = torch.tensor([feed], dtype=torch.long, device=self.device)
            self.model(input_ids=x, use_cache=True, logits_to_keep=1, **{_cache_kwarg(self.model): self.cache})

    def draft_tree(self, tree: Tree) -> tuple[list[int], list[int]]:
        """Draft a tree round on the stream's end: (tokens of nodes 0..n, the spine). The stream
        goes on along the spine; the other candidates' cache rows are cropped away."""
        self.sync()
        before = self.cached_len
        nodes = draft_tree(self, tree)
        self.crop(before)
        spine = [nodes[i + 1] for i in spine_nodes(tree)]
        self.tokens.extend(spine)
        return nodes, spine

    @torch.inference_mode()
    def draft(self, n: int) -> tuple[list[int], list[list[int]] | None, list[list[float]] | None]:
        """Draft n tokens onto the stream: (tokens, q ids, q probs); q is None when greedy."""
        toks: list[int] = []
        q_ids: list[list[int]] | None = None if self.params.greedy else []
        q_probs: list[list[float]] | None = None if self.params.greedy else []
        for _ in range(n):
            feed = self.tokens[self.cached_len:]
            x = torch.tensor([feed], dtype=torch.long, device=self.device)
            out = self.model(input_ids=x, use_cache=True, logits_to_keep=1, **{_cache_kwarg(self.model): self.cache})
            logits = out.logits[0, -1, : self.vocab_size]
            if self.params.greedy:
                t = int(torch.argmax(logits))
            else:
                ids, probs = draft_distribution(logits, self.params)
                t, _ = sample_sparse(ids, probs, position_generator(self.seed, len(self.tokens)))
                q_ids.append(ids.tolist())
                q_probs.append(probs.tolist())
            toks.append(t)
            self.tokens.append(t)
        return toks, q_ids, q_probs

    def truncate(self, length: int) -> None:
        """Keep the first `length` stream tokens (the cache keeps at most length - 1 of them)."""
        del self.tokens[length:]
        drop = self.cached_len - (length - 1)
        if drop > 0:
            self.cache.crop(-drop)


def spine_nodes(tree: Tree) -> list[int]:
    """Node indexes of the rank-1 path from the root to the deepest node."""
    path, head = [], -1
    for i, p in enumerate(tree.parents):
        if p == head:
            path.append(i)
            head = i
    return path


@dataclass
class PipelinedResult:
    token_ids: list[int]
    finish_reason: str
    wall_s: float  # decoding only: from both caches prefilled to the last token applied
    verdicts: int = 0  # rounds verified and applied
    sent: int = 0  # rounds sent (resends not counted)
    cancelled: int = 0  # rounds voided at the edge (sent, or drafted and not yet sent)
    stale_at_cloud: int = 0
    resends: int = 0
    misses: int = 0  # verdicts that did not keep the round after them: each put a round trip on the path
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    accepted_per_verdict: list[int] = field(default_factory=list)

    @property
    def ms_per_token(self) -> float:
        return self.wall_s * 1e3 / max(1, len(self.token_ids))


class _Cloud(threading.Thread):
    """The verifier: TargetSession + CloudWindow, fed by `up`, answering on `down`."""

    def __init__(self, pair: ModelPair, prompt: list[int], params: SamplingParams, up: DelayLink,
                 down: DelayLink, rule: KeepRule, trees: bool):
        super().__init__(daemon=True, name="pipelined-cloud")
        self.pair, self.prompt, self.params, self.up, self.down = pair, prompt, params, up, down
        self.trees = trees
        self.emitted: dict[int, tuple[int, ...]] = {}  # per verified round, for a replay
        self.window = CloudWindow(rule)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.stale = 0
        self.verify_ms = 0.0

    def run(self) -> None:
        try:
            target = (TreeCache(self.pair.target, self.prompt, self.pair.vocab_size) if self.trees
                      else TargetSession(self.pair.target, self.prompt, self.pair.vocab_size, self.params))
            self.ready.set()
            while (m := self.up.recv(None)) is not CLOSE:
                assert isinstance(m, RoundMsg)
                d = self.window.admit(m.round_id, m.basis)
                if isinstance(d, Replay):
                    self.down.send(VerdictMsg(m.round_id, d.accepted, d.next_token, self.emitted[m.round_id]))
                    continue
                if isinstance(d, Stale):
                    self.stale += 1
                    continue
                if d.context_ends_with is not None and target.tokens[-1] != d.context_ends_with:
                    target.tokens[-1] = d.context_ends_with  # only under a swapped-in wrong keep rule
                    target.pending = [d.context_ends_with]
                t = time.perf_counter()
                if m.tree is not None:
                    emitted, path = verify_tree(target, m.tree, [target.tokens[-1], *m.draft.tokens], self.params,
                                                m.draft.seed)
                    accepted, drafted = len(path), len(spine_nodes(m.tree))
                else:
                    v = target.verify(m.draft)
                    accepted, drafted = v.accepted, len(m.draft)
                    emitted = [*m.draft.tokens[: v.accepted], v.next_token]
                self.verify_ms += (time.perf_counter() - t) * 1e3
                self.window.record(m.round_id, drafted, accepted, emitted[-1])
                self.emitted[m.round_id] = tuple(emitted)
                self.down.send(VerdictMsg(m.round_id, accepted, emitted[-1], tuple(emitted)))
        except BaseException as exc:  # surfaced by the edge loop
            self.error = exc
            self.ready.set()


def pipelined_generate(pair: ModelPair, prompt_ids: list[int], max_new_tokens: int, length: int,
                       rounds_in_flight: int, one_way_ms: float, params: SamplingParams = SamplingParams(),
                       seed: int = 0, draft_ahead: bool = True, faults: Faults = Faults(),
                       rule: KeepRule = KeepRule(), resend_after_s: float | None = None,
                       tree: Tree | None = None) -> PipelinedResult:
    """Generate with up to `rounds_in_flight` rounds of `length` drafts in flight (with `tree`, its
    spine's depth is the length). draft_ahead=False (with R = 1) is one round per round trip over the
    same link: the plain single chain (or tree), the baseline."""
    if tree is not None:
        length = len(spine_nodes(tree))
        spine_set = set(spine_nodes(tree))
        if any(p >= 0 and p not in spine_set for p in tree.parents):
            # a path off the spine could then reach the spine's depth and pass for a kept round
            raise ModelError("tree rounds in flight need a spine shape: only the rank-1 path may have children")
    if length < 1:
        raise ModelError(f"length must be >= 1, got {length}")
    if rounds_in_flight < 1:
        raise ModelError(f"rounds_in_flight must be >= 1, got {rounds_in_flight}")
    if not draft_ahead and rounds_in_flight > 1:
        raise ModelError("rounds_in_flight > 1 needs draft_ahead: later rounds are built on predictions")
    if one_way_ms < 0:
        raise ModelError(f"one_way_ms must be >= 0, got {one_way_ms}")
    if not prompt_ids or max_new_tokens < 1:
        raise ModelError("need a non-empty prompt and max_new_tokens >= 1")
    resend = resend_after_s if resend_after_s is not None else max(1.0, 20 * one_way_ms / 1e3)
    up = DelayLink(one_way_ms)
    down = DelayLink(one_way_ms, faults.drop_verdicts, faults.duplicate_verdicts)
    cloud = _Cloud(pair, prompt_ids, params, up, down, rule, tree is not None)
    cloud.start()
    try:
        stream = DraftStream(pair.draft, prompt_ids, pair.vocab_size, params, seed)
        cloud.ready.wait()
        if cloud.error is not None:
            raise cloud.error
        return _edge_loop(pair, stream, len(prompt_ids), max_new_tokens, length, draft_ahead, seed, up, down,
                          EdgeWindow(rounds_in_flight, rule), cloud, resend, tree)
    finally:
        up.send(CLOSE)
        cloud.join(timeout=30)


def _edge_loop(pair: ModelPair, stream: DraftStream, prompt_len: int, max_new: int, length: int,
               draft_ahead: bool, seed: int, up: DelayLink, down: DelayLink, window: EdgeWindow, cloud: _Cloud,
               resend_s: float, tree: Tree | None) -> PipelinedResult:
    t0 = time.perf_counter()
    res = PipelinedResult([], "length", 0.0)
    out = res.token_ids
    msgs: dict[int, RoundMsg] = {}  # rounds in flight, for a resend
    emitted: dict[int, tuple[int, ...]] = {}  # verdicts' tokens, by round
    ready: tuple[Draft, int] | None = None  # drafted, not yet sent: (draft, prediction after it)
    # the target's random stream of a round is keyed by the round's first stream position: no two
    # verified rounds start at the same one, and it does not depend on timing either
    done = False

    def apply(a: Applied) -> None:
        nonlocal ready, done
        msgs.pop(a.sent.round_id)
        res.verdicts += 1
        res.accepted_per_verdict.append(a.accepted)
        base = prompt_len + len(out)
        new = [*emitted.pop(a.sent.round_id)[:-1], a.last_token]
        if not a.kept:  # the stream past the verdict was built on a prediction that failed
            res.misses += 1
            ahead = stream.tokens[base:]
            same = next((i for i, (x, y) in enumerate(zip(ahead, new)) if x != y), min(len(ahead), len(new)))
            stream.truncate(base + same)
            stream.tokens.extend(new[same:])
            res.cancelled += len(a.cancelled) + (ready is not None)
            for r in a.cancelled:
                msgs.pop(r, None)
                emitted.pop(r, None)
            ready = None
        reason = finish(new, out, max_new, pair.eos_ids)
        if reason is not None:
            res.finish_reason, done = reason, True

    def receive(m: object) -> None:
        assert isinstance(m, VerdictMsg)
        emitted.setdefault(m.round_id, m.emitted)
        for a in window.on_verdict(m.round_id, m.accepted, m.next_token):
            if not done:
                apply(a)

    while not done:
        if cloud.error is not None:
            raise cloud.error
        m = down.recv(0)
        if m is not None:
            receive(m)
            continue
        if ready is not None and not window.full:
            d, p = ready
            sent = window.send(length, p)
            msgs[sent.round_id] = RoundMsg(sent.round_id, sent.basis, d, tree)
            up.send(msgs[sent.round_id])
            res.sent += 1
            ready = None
            continue
        ahead = len(stream.tokens) - prompt_len - len(out)  # drafted past the verified context
        if ready is None and (draft_ahead or not window.in_flight) and len(out) + ahead < max_new:
            t = time.perf_counter()
            start = len(stream.tokens)
            if tree is not None:  # candidates are the draft's top-c: q is one-hot, nothing to send
                nodes, _ = stream.draft_tree(tree)
                toks, q_ids, q_probs = nodes[1:], None, None
            else:
                toks, q_ids, q_probs = stream.draft(length)
            p = stream.draft(1)[0][0] if draft_ahead else NO_PREDICTION
            res.draft_ms += (time.perf_counter() - t) * 1e3
            ready = (Draft(toks, round_seed(seed, start), q_ids, q_probs), p)
            continue
        m = down.recv(resend_s)
        if m is None:  # the oldest round's verdict is overdue: ask again (the cloud replays it)
            if window.in_flight:
                up.send(msgs[window.in_flight[0].round_id])
                res.resends += 1
            continue
        receive(m)
    res.wall_s = time.perf_counter() - t0
    res.stale_at_cloud = cloud.stale
    res.verify_ms = cloud.verify_ms
    return res
