"""The continuous speculation tree, in-process over a link with a real one-way delay.

The edge (the calling thread) keeps one tree of the future rooted at the last committed token it
knows and grows it best-first by the draft's path probability: each step feeds the k best
unexpanded nodes in one draft forward (tree ancestor mask on the draft's cache) and gives each its
children, the draft's top tokens there (`width`, fewer when `cumulative` of the draft's mass is
covered first). New expansions go to the cloud every `flush_ms` without waiting for any verdict.
The cloud (a thread) keeps the same tree under its committed tip; whenever nodes arrive it feeds
them all in one target forward (ancestor mask on its committed KV cache, nodes kept in the cache
until pruned) and walks from the tip: a child holds the target's token (greedy: the argmax;
sampling: multi-candidate rejection over the node's whole child set, exact) -> commit it and move
on; no child does -> commit the target's own token there (a miss: the edge restarts its tree from
it, one round trip lost); the tip has no children yet -> wait. It sends the committed tokens back;
the edge prunes its tree to the new root's subtree, or restarts it after a miss.

Why this beats a chain over a long link: a chain's round ends at the draft's first disagreement;
here a miss needs the target's token outside the draft's top-w at a node on the path, and no round
boundary ends speculation: the edge keeps the cloud supplied for as long as the path stays in the
tree. The output is the target's in both modes (every token is decided once, at its position, on a
candidate set fixed by the draft alone; the sampling stream is keyed by position, so a sample
depends on the seed only, not on the delay or timing, while fill is off; with fill a position may be
drawn directly or by rejection as timing has it, so samples differ by timing, their distribution not).

Faults as in nodes/models/pipelined.py, on both directions: dropped and duplicated messages (and
reordered verdicts). Every message is idempotent (nodes/protocol/stream_tree.py); a stall longer
than `resend_after_s` makes the edge resend its live tree, which also asks the cloud for the verdict.

Device emulation (nodes/device.py), on either side: each draft forward is padded to the edge device's
time for one drafting step (its nodes go in one batched forward, as a round tree drafts one step per
depth), each target forward to the cloud device's time for its new positions; the pad is a sleep
of the side's own thread, so a verdict that arrives meanwhile waits for the forward, as on a device.
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from nodes.device import Pacer
from nodes.models.errors import ModelError
from nodes.models.loading import ModelPair
from nodes.models.pipelined import CLOSE, DelayLink
from nodes.models.sampling import draft_distribution, round_generators, target_probs
from nodes.models.tree_sampling import accept_candidates, one_hot
from nodes.models.tree_verify import TreeCache
from nodes.protocol.request import finish
from nodes.protocol.stream_tree import (CloudTree, EdgeTree, Limits, NodesMsg, StreamTreeError, VerdictMsg,
                                        check_nodes_msg, children_count, unseen_part)
from schemas.rounds import SamplingParams, round_seed

OFF = -2  # key of the cloud's tip while it is off the tree (after a miss, before the edge restarts)


@dataclass(frozen=True)
class LinkFaults:
    """Indexes (0-based, in sending order) of messages the link drops, delivers twice or delivers
    late (after the next ones), per direction."""

    drop_up: frozenset[int] = frozenset()
    duplicate_up: frozenset[int] = frozenset()
    drop_down: frozenset[int] = frozenset()
    duplicate_down: frozenset[int] = frozenset()
    late_down: frozenset[int] = frozenset()
    late_ms: float = 15.0


class FaultyLink(DelayLink):
    """DelayLink that can also deliver chosen messages `late_ms` late, so later ones overtake them."""

    def __init__(self, one_way_ms: float, drop: frozenset[int] = frozenset(), duplicate: frozenset[int] = frozenset(),
                 late: frozenset[int] = frozenset(), late_ms: float = 15.0) -> None:
        super().__init__(one_way_ms, drop, duplicate)
        self.late, self.late_s = late, late_ms / 1e3

    def send(self, msg: object) -> None:
        with self._cv:
            n, self.sent = self.sent, self.sent + 1
            if n in self.drop:
                return
            at = time.monotonic() + self.delay_s + (self.late_s if n in self.late else 0.0)
            for _ in range(2 if n in self.duplicate else 1):
                i = bisect.bisect_right([a for a, _ in self._q], at)
                self._q.insert(i, (at, msg))
            self._cv.notify_all()


class Acceptance:
    """Sampled decision at a node with children: multi-candidate rejection over the whole child set
    (q one-hot: the children are the draft's top tokens, chosen deterministically). An object so a
    test can swap in a wrong rule (the negative control)."""

    def choose(self, p: torch.Tensor, candidates: list[int], vocab: int, gen: torch.Generator) -> tuple[int, int]:
        return accept_candidates(p, candidates, [one_hot(t, vocab) for t in candidates], gen)


@dataclass
class StreamTreeResult:
    token_ids: list[int]
    finish_reason: str
    wall_s: float
    misses: int = 0  # verdicts whose last token was not in the edge's tree: each a round trip on the path
    expansions: int = 0  # nodes given children at the edge
    draft_forwards: int = 0
    nodes_sent: int = 0
    messages_sent: int = 0
    resends: int = 0
    verify_forwards: int = 0
    nodes_verified: int = 0
    stale_groups: int = 0  # groups the cloud dropped (void tree, or parent not arrived)
    refused_msgs: int = 0
    cloud_wait_ms: float = 0.0  # the cloud idle with an unexpanded tip (waiting for nodes)
    verify_ms: float = 0.0  # with device emulation: the device's time (verify_real_ms: this machine's)
    draft_ms: float = 0.0   # likewise
    verify_real_ms: float = 0.0
    draft_real_ms: float = 0.0
    draft_overruns: int = 0   # emulated draft forwards whose real compute took longer than the device's
    verify_overruns: int = 0  # likewise for target forwards
    fills: int = 0  # positions the cloud decided directly while idle (fill on), one target forward each
    followed: int = 0  # tree nodes the cloud walked along filled tokens without judging
    # committed tokens judged at a node the edge expanded, and of those, the ones within the children
    # each width 1..Limits.max_width would have given that node (control/stream_width.py)
    judged: int = 0
    covered: list[int] = field(default_factory=list)

    @property
    def ms_per_token(self) -> float:
        return self.wall_s * 1e3 / max(1, len(self.token_ids))

    @property
    def round_trips_per_token(self) -> float:
        return self.misses / max(1, len(self.token_ids))


class _TreeKV:
    """A model's cache over the committed context before the tree's root, then tree-node rows (fed
    with the ancestor mask), keyed by node id; compacted when the root moves."""

    def __init__(self, model, context: list[int], vocab_size: int) -> None:
        self.c = TreeCache(model, context, vocab_size)  # rows: context[:-1]
        self.prefix = len(context) - 1  # committed rows before the root
        self.rows: dict[int, int] = {}

    def feed(self, nodes: list[int], tokens: list[int], parents: list[int], positions: list[int],
             cached_ancestors: list[list[int]]) -> torch.Tensor:
        """Feed nodes (parents index into this block, -1: none); their ancestors already in the cache
        are named by node id. Returns logits [n, vocab]."""
        base = self.c.cached_len
        self.c._prefix = self.prefix
        logits = self.c.feed(tokens, parents, positions, [[self.rows[a] for a in anc] for anc in cached_ancestors])
        for j, v in enumerate(nodes):
            self.rows[v] = base + j
        return logits

    def reroot(self, committed: list[int], live: list[int]) -> None:
        """The nodes in `committed` (fed, in order) join the prefix; only `live` nodes' rows stay."""
        keep = list(range(self.prefix)) + [self.rows[v] for v in committed]
        live_rows = sorted((self.rows[v], v) for v in live if v in self.rows)
        keep += [r for r, _ in live_rows]
        if keep != list(range(self.c.cached_len)):
            self.c.keep_rows(keep)
        self.prefix += len(committed)
        self.rows = {v: self.prefix + i for i, (_, v) in enumerate(live_rows)}


class _Cloud(threading.Thread):
    """The cloud's side. With `pacer`, each target forward after the root's (which belongs to the
    prefill, not emulated, as a chain's) is padded to the cloud device's time; `device_lock` makes the
    forwards of every session holding it take turns (one shared device: waiting for it is not device time)."""

    def __init__(self, pair: ModelPair, prompt: list[int], params: SamplingParams, seed: int, up: DelayLink,
                 down: DelayLink, limits: Limits, acceptance: Acceptance, pacer: Pacer | None = None,
                 device_lock: threading.Lock | None = None, fill: bool = False, fill_until: int | None = None) -> None:
        super().__init__(daemon=True, name="stream-tree-cloud")
        self.pair, self.prompt, self.params, self.seed = pair, prompt, params, seed
        self.up, self.down, self.limits, self.acceptance = up, down, limits, acceptance
        self.pacer, self.device_lock, self.fill = pacer, device_lock, fill
        self.fill_until = fill_until  # context length past which the cloud does not fill (the request's end)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.forwards = self.verified = self.stale = self.refused = self.misses = self.overruns = 0
        self.fills = self.followed = 0
        self.verify_ms = self.verify_real_ms = self.wait_ms = 0.0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced by the edge loop
            self.error = exc
            self.ready.set()

    def _run(self) -> None:
        tree = CloudTree(self.prompt, self.limits)
        kv = _TreeKV(self.pair.target, self.prompt, self.pair.vocab_size)
        logits: dict[int, torch.Tensor] = {}
        logits[OFF] = self._feed(kv, [OFF], [self.prompt[-1]], [-1], [len(self.prompt) - 1], [[]], paced=False)[0]
        self.ready.set()
        ack = len(self.prompt)
        pos_of: dict[int, int] = {}  # context position of each live node
        while True:
            m = None
            if (self.fill and tree.idle and len(tree.context) - ack < self.limits.max_verdict_tokens
                    and (self.fill_until is None or len(tree.context) < self.fill_until)):
                m = self.up.recv(0)
                if m is None:  # nothing to verify and nothing arrived: decide the next position directly
                    self._fill(tree, kv, logits)
                    self.down.send(tree.verdict(ack))
                    continue
            if m is None:
                idle_since = time.perf_counter() if tree.idle else None
                m = self.up.recv(None)
                if idle_since is not None:
                    self.wait_ms += (time.perf_counter() - idle_since) * 1e3
            msgs = [m]
            while (m := self.up.recv(0)) is not None:
                msgs.append(m)
            if any(x is CLOSE for x in msgs):
                return
            ping, new = False, []
            for m in msgs:
                assert isinstance(m, NodesMsg)
                try:
                    check_nodes_msg(m, self.pair.vocab_size, self.limits)
                except StreamTreeError:
                    self.refused += 1
                    continue
                # what the edge holds, never past our own tip: an honest root is never ahead of it, and a
                # made-up position must not let fill run on unbounded
                ack = max(ack, min(m.root[1] + 1, len(tree.context)))
                ping |= not m.groups
                was_off = tree.tip is None
                adm = tree.admit(m)
                if was_off and tree.tip is not None:  # the edge's root (or a node walked to) is the token fed last
                    kv.rows[tree.tip] = kv.rows.pop(OFF)
                    logits[tree.tip] = logits.pop(OFF)
                    pos_of[tree.tip] = tree.tip_pos
                self.stale += adm.stale + adm.over_limit
                self.followed += adm.followed
                new += adm.new
            new = [v for v in new if v in tree.nodes and v != tree.tip]  # a later walk may have passed them
            for v in new:
                pos_of[v] = pos_of[tree.nodes[v].parent] + 1
            # Judge first with what is already fed (the tip's logits came with an earlier forward), then
            # feed what is still live: a verdict never waits for a forward it does not need, and the
            # siblings of a committed child are pruned before they cost the device anything.
            sent = self._walk_and_send(tree, kv, logits, ack)
            new = [v for v in new if v in tree.nodes and v not in logits]  # the tip too, if the walk reached it
            if new:
                idx = {v: j for j, v in enumerate(new)}
                par = [tree.nodes[v].parent for v in new]
                anc = [[] if v == tree.tip else self._cached_ancestors(tree, p, idx) for v, p in zip(new, par)]
                out = self._feed(kv, new, [tree.nodes[v].token for v in new],
                                 [-1 if v == tree.tip else idx.get(p, -1) for v, p in zip(new, par)],
                                 [pos_of[v] for v in new], anc)
                for j, v in enumerate(new):
                    logits[v] = out[j]
                self.verified += len(new)
                sent |= self._walk_and_send(tree, kv, logits, ack)
            for v in [v for v in pos_of if v not in tree.nodes]:
                del pos_of[v]
            if ping and not sent:
                self.down.send(tree.verdict(ack))

    def _walk_and_send(self, tree: CloudTree, kv: _TreeKV, logits: dict[int, torch.Tensor], ack: int) -> bool:
        """Walk; send the verdict if anything was committed, and only then, after a miss, feed the
        target's token (the edge restarts from it one way later: the forward runs meanwhile)."""
        if not self._walk(tree, kv, logits):
            return False
        self.down.send(tree.verdict(ack))
        if tree.tip is None:
            logits[OFF] = self._feed(kv, [OFF], [tree.context[-1]], [-1], [tree.tip_pos], [[]])[0]
        return True

    def _fill(self, tree: CloudTree, kv: _TreeKV, logits: dict[int, torch.Tensor]) -> None:
        """Commit the target's own token at the idle tip (greedy: the argmax; sampling: a draw from the
        target's distribution on the position's stream) and feed it, one target forward per token."""
        key = tree.tip if tree.tip is not None else OFF
        lg = logits[key]
        if self.params.greedy:
            x = int(torch.argmax(lg))
        else:
            _, gen = round_generators(round_seed(self.seed, tree.tip_pos + 1))
            x = int(torch.multinomial(target_probs(lg, self.params), 1, generator=gen))
        tree.fill(x)
        self.fills += 1
        kv.reroot([key], [])
        logits.clear()
        logits[OFF] = self._feed(kv, [OFF], [x], [-1], [tree.tip_pos], [[]])[0]

    @staticmethod
    def _cached_ancestors(tree: CloudTree, p: int, in_block: dict[int, int]) -> list[int]:
        """Ancestors of a new node that were fed before this block: from the first one outside the
        block up to the tip (the tip's own row is a tree row until the tip moves)."""
        while p in in_block:
            if p == tree.tip:  # the tip itself is in this block (fed with the prefix only)
                return []
            p = tree.nodes[p].parent
        out = []
        while True:
            out.append(p)
            if p == tree.tip:
                return out
            p = tree.nodes[p].parent

    def _feed(self, kv: _TreeKV, nodes, tokens, parents, positions, anc, paced: bool = True) -> torch.Tensor:
        pacer = self.pacer if paced else None
        if pacer is not None and self.device_lock is not None:
            with self.device_lock:
                return self._forward(kv, nodes, tokens, parents, positions, anc, pacer)
        return self._forward(kv, nodes, tokens, parents, positions, anc, pacer)

    def _forward(self, kv: _TreeKV, nodes, tokens, parents, positions, anc, pacer: Pacer | None) -> torch.Tensor:
        t = time.perf_counter()
        with torch.inference_mode():
            out = kv.feed(nodes, tokens, parents, positions, anc)
        real = (time.perf_counter() - t) * 1e3
        ms = real
        if pacer is not None:
            ms, pad = pacer.forward(len(nodes), real)
            if pad > 0:
                time.sleep(pad / 1e3)
            elif pacer.profile.forward_ms(len(nodes)) > 0:
                self.overruns += 1
        self.forwards += 1
        self.verify_ms += ms
        self.verify_real_ms += real
        return out

    def _walk(self, tree: CloudTree, kv: _TreeKV, logits: dict[int, torch.Tensor]) -> bool:
        """Decide at the tip while it has children; True when anything was committed."""
        committed: list[int] = []
        grew = False
        while tree.tip is not None and tree.tip in logits and (kids := tree.children(tree.tip)) is not None:
            tip, lg = tree.tip, logits[tree.tip]
            cand = [tree.nodes[c].token for c in kids]
            if self.params.greedy:
                x = int(torch.argmax(lg))
                i = cand.index(x) if x in cand else -1
            else:
                _, gen = round_generators(round_seed(self.seed, tree.tip_pos + 1))
                i, x = self.acceptance.choose(target_probs(lg, self.params), cand, self.pair.vocab_size, gen)
                if i < 0 and x in cand:  # a fallback draw equal to a child is that child: stay on the tree
                    i = cand.index(x)
            committed.append(tip)
            grew = True
            if i < 0:
                tree.miss(x)
                self.misses += 1
                kv.reroot(committed, [])
                logits.clear()  # the caller feeds the target's token once the verdict is out
                return True
            tree.advance(kids[i])
        if committed:
            kv.reroot(committed, list(tree.nodes))
            for v in [v for v in logits if v not in tree.nodes]:
                del logits[v]
        return grew


def stream_tree_generate(pair: ModelPair, prompt_ids: list[int], max_new_tokens: int, one_way_ms: float,
                         params: SamplingParams = SamplingParams(), seed: int = 0, width: int = 2,
                         cumulative: float = 0.8, batch: int = 16, flush_ms: float = 1.0,
                         limits: Limits = Limits(), min_path_prob: float = 1e-4, faults: LinkFaults = LinkFaults(),
                         resend_after_s: float | None = None, acceptance: Acceptance = Acceptance(),
                         lead_penalty: float = 2.0, edge_pacer: Pacer | None = None,
                         cloud_pacer: Pacer | None = None, fill: bool = False) -> StreamTreeResult:
    """Generate with the continuous speculation tree: `width` children per expanded node at most
    (fewer once `cumulative` of the draft's mass is covered), `batch` nodes expanded per draft
    forward, new nodes sent every `flush_ms`, at most `limits.max_nodes` in the tree; nodes whose
    draft path probability is below `min_path_prob` are not expanded. Nodes shallower than where the
    cloud is expected to be when an expansion arrives (the commit rate x 2 x delay) rank `lead_penalty`
    nats lower per token short of it (0: plain best-first). `edge_pacer` / `cloud_pacer`: emulated
    devices (nodes/device.py) for the draft's and the target's forwards. `fill`: the cloud decides
    positions itself while it has nothing to verify (one target forward per filled token)."""
    if not 1 <= width <= limits.max_width:
        raise ModelError(f"width must be in 1..{limits.max_width}, got {width}")
    if batch < 1 or flush_ms < 0 or one_way_ms < 0:
        raise ModelError(f"need batch >= 1, flush_ms >= 0, one_way_ms >= 0; got {batch}, {flush_ms}, {one_way_ms}")
    if not prompt_ids or max_new_tokens < 1:
        raise ModelError("need a non-empty prompt and max_new_tokens >= 1")
    resend = resend_after_s if resend_after_s is not None else max(1.0, 20 * one_way_ms / 1e3)
    up = FaultyLink(one_way_ms, faults.drop_up, faults.duplicate_up)
    down = FaultyLink(one_way_ms, faults.drop_down, faults.duplicate_down, faults.late_down, faults.late_ms)
    cloud = _Cloud(pair, prompt_ids, params, seed, up, down, limits, acceptance, cloud_pacer, fill=fill,
                   fill_until=len(prompt_ids) + max_new_tokens)
    cloud.start()
    try:
        kv = _TreeKV(pair.draft, prompt_ids, pair.vocab_size)
        cloud.ready.wait()
        if cloud.error is not None:
            raise cloud.error
        res = _edge_loop(pair, kv, prompt_ids, max_new_tokens, params, width, cumulative, batch, flush_ms / 1e3,
                         limits, min_path_prob, lead_penalty, one_way_ms / 1e3, up, down, cloud, resend,
                         pacer=edge_pacer)
    finally:
        up.send(CLOSE)
        cloud.join(timeout=30)
    res.verify_forwards, res.nodes_verified = cloud.forwards, cloud.verified
    res.stale_groups, res.refused_msgs = cloud.stale, cloud.refused
    res.cloud_wait_ms, res.verify_ms = cloud.wait_ms, cloud.verify_ms
    res.verify_real_ms, res.verify_overruns = cloud.verify_real_ms, cloud.overruns
    res.fills, res.followed = cloud.fills, cloud.followed
    return res


def _edge_loop(pair: ModelPair, kv: _TreeKV, prompt: list[int], max_new: int, params: SamplingParams, width: int,
               cumulative: float, batch: int, flush_s: float, limits: Limits, min_path_prob: float,
               lead_penalty: float, delay_s: float, up: DelayLink,
               down: DelayLink, cloud: _Cloud, resend_s: float,
               on_commit: Callable[[StreamTreeResult, list[int], list[int], bool, bool], None] | None = None,
               pacer: Pacer | None = None) -> StreamTreeResult:
    """The edge's side. `on_commit(result, new tokens, tokens kept for the output, miss, done)` runs after
    each verdict that committed anything (the edge worker streams and logs it; nodes/edge_stream.py).
    With `pacer`, each draft forward is padded to the edge device's time for one drafting step."""
    t0 = time.perf_counter()
    res = StreamTreeResult([], "length", 0.0, covered=[0] * limits.max_width)
    out = res.token_ids
    tops: dict[int, tuple[list[int], list[float]]] = {}  # expanded node -> the draft's top tokens and probs
    tree = EdgeTree(len(prompt) - 1, prompt[-1], limits, lead_penalty)
    rate = 0.0  # committed tokens per second, smoothed over about a round trip
    last_verdict = time.perf_counter()
    ctx = list(prompt)  # the committed context the edge holds
    min_logp = math.log(min_path_prob) if min_path_prob > 0 else -math.inf
    last_flush = last_progress = time.perf_counter()
    done = False
    last_pos = len(prompt) - 1 + max_new  # the context position of the request's last token

    def send(groups) -> None:
        for i in range(0, max(1, len(groups)), limits.max_groups_per_msg):
            chunk = tuple(groups[i:i + limits.max_groups_per_msg])
            up.send(NodesMsg(tree.root_msg, chunk))
            res.messages_sent += 1
            res.nodes_sent += sum(len(k) for _, k in chunk)

    def receive(m: object) -> None:
        nonlocal done, last_progress, rate, last_verdict
        assert isinstance(m, VerdictMsg)
        new = unseen_part(len(ctx), m)
        if not new:
            return
        now = time.perf_counter()
        last_progress = now
        dt = max(now - last_verdict, 1e-4)
        w = min(1.0, dt / max(2 * delay_s, 0.01))
        rate = (1 - w) * rate + w * len(new) / dt
        last_verdict = now
        ctx.extend(new)
        old_root = tree.root
        c = tree.commit(new)
        _count_cover(res, tops, [old_root, *c.path], new[:max_new - len(out)], cumulative)
        for v in [v for v in tops if v not in tree.nodes]:
            del tops[v]
        # every committed node but the last had children, so it was fed; after a miss the last one
        # had children too (the cloud judges only nodes with children). A verdict the cloud filled past
        # the tree may commit nodes never expanded, and tokens never in it: those are fed as a chain.
        chain = [old_root, *c.path] if c.restart else [old_root, *c.path[:-1]]
        fed = 0
        while fed < len(chain) and chain[fed] in kv.rows:
            fed += 1
        if fed < len(chain) and not c.restart:
            raise ModelError(f"stream tree: a verdict committed a node the edge never expanded ({chain})")
        if c.restart and len(out) + len(new) <= max_new:  # a miss past the last token cost nothing
            res.misses += 1
        kv.reroot(chain[:fed], [] if c.restart else list(tree.nodes))
        if c.restart and kv.prefix < len(ctx) - 1:
            _catch_up(kv, ctx)
        before = len(out)
        reason = finish(new, out, max_new, pair.eos_ids)
        if reason is not None:
            res.finish_reason, done = reason, True
        if on_commit is not None:
            on_commit(res, new, out[before:], c.restart, reason is not None)

    # The context goes out before the first draft forward: the cloud opens the session and prefills
    # the prompt while the edge drafts, instead of after the first group arrives (a target's prefill
    # of a long prompt is the larger part of the first token's time).
    send([])
    while not done:
        if cloud.error is not None:
            raise cloud.error
        m = down.recv(0)
        if m is not None:
            receive(m)
            continue
        now = time.perf_counter()
        if tree.outbox and (now - last_flush >= flush_s or len(tree.outbox) >= limits.max_groups_per_msg):
            send(tree.take_outbox())
            last_flush = now
            continue
        if lead_penalty > 0:
            tree.set_lead(round(rate * (2 * delay_s + flush_s)))
        vs_ok = tree.best(min(batch, (limits.max_nodes - len(tree.nodes)) // width), min_logp, last_pos)
        if vs_ok:
            t = time.perf_counter()
            _expand(tree, kv, vs_ok, params, width, cumulative, tops, limits.max_width)
            real = (time.perf_counter() - t) * 1e3
            ms = real
            if pacer is not None:  # one batched forward: one step of the device, as a round tree's depth
                ms, pad = pacer.draft(1, real)
                if pad > 0:
                    time.sleep(pad / 1e3)
                elif pacer.profile.draft_ms(1) > 0:
                    res.draft_overruns += 1
            res.draft_ms += ms
            res.draft_real_ms += real
            res.draft_forwards += 1
            res.expansions += len(vs_ok)
            continue
        if tree.outbox:
            send(tree.take_outbox())
            last_flush = time.perf_counter()
            continue
        wait = resend_s - (time.perf_counter() - last_progress)
        m = down.recv(max(0.0, wait))
        if m is None:  # stalled: resend the live tree and ask the cloud for its verdict again
            groups = tree.all_groups()
            if groups:
                send(groups)
            send([])
            res.resends += 1
            last_progress = time.perf_counter()
            continue
        receive(m)
    res.wall_s = time.perf_counter() - t0
    return res


def _count_cover(res: StreamTreeResult, tops: dict[int, tuple[list[int], list[float]]], parents: list[int],
                 tokens: list[int], cumulative: float) -> None:
    """Count each committed token judged at a node the edge expanded (`parents[i]`: token i's parent,
    as far as the tree reached) and, per width, whether that width's children held it."""
    for parent, t in zip(parents, tokens):
        top = tops.get(parent)
        if top is None:
            continue
        ids, probs = top
        res.judged += 1
        rank = ids.index(t) if t in ids else len(ids)
        for w in range(1, len(res.covered) + 1):
            if rank < children_count(probs, w, cumulative):
                res.covered[w - 1] += 1


def _catch_up(kv: _TreeKV, ctx: list[int]) -> None:
    """Feed committed tokens the edge's cache lacks (the cloud filled past its tree) as one chain, so
    the cache holds the whole committed context before the new root."""
    toks = ctx[kv.prefix:len(ctx) - 1]
    ids = [-10 - i for i in range(len(toks))]
    with torch.inference_mode():
        kv.feed(ids, toks, list(range(-1, len(toks) - 1)), list(range(kv.prefix, len(ctx) - 1)), [[]] * len(toks))
    kv.reroot(ids, [])


def _expand(tree: EdgeTree, kv: _TreeKV, vs: list[int], params: SamplingParams, width: int, cumulative: float,
            tops: dict[int, tuple[list[int], list[float]]] | None = None, track: int = 0) -> None:
    """One draft forward over frontier nodes vs; each gets its children (the draft's top tokens).
    `tops`: also keep each node's `track` top tokens and probabilities (for the misses of other widths)."""
    toks, pos, anc = [], [], []
    for v in vs:
        n = tree.nodes[v]
        toks.append(n.token)
        pos.append(tree.root_pos + n.depth)
        a, u = [], n.parent
        while u != -1:
            a.append(u)
            u = tree.nodes[u].parent
        anc.append(a)
    with torch.inference_mode():
        logits = kv.feed(vs, toks, [-1] * len(vs), pos, anc)
    for j, v in enumerate(vs):
        top = max(width, track)
        if params.greedy:
            probs = torch.softmax(logits[j], -1)
            p, ids = torch.topk(probs, min(top, probs.shape[-1]))
        else:
            ids, p = draft_distribution(logits[j], params)
            ids, p = ids[:top], p[:top]
        pl, il = p.tolist(), ids.tolist()
        k = children_count(pl, width, cumulative)
        tree.expand(v, il[:k], pl[:k])
        if tops is not None:
            tops[v] = (il, pl)
