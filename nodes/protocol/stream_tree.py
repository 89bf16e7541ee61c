"""Rules of the continuous speculation tree (forked rounds), without models.

The edge keeps one growing tree of the future rooted at the last committed token it knows, expands
it best-first by the draft's path probability (a node is expanded once, and then gets ALL its
children at once: the draft's top-w there), and streams each expansion to the cloud as a group
(parent id, [(child id, token)...]) without waiting for verdicts. The cloud keeps the same tree
under its committed tip, decides at the tip (the target's token is a child: commit it and move; it
is not: commit the target's token, a miss, the tree is void; no children yet: wait) and sends the
committed tokens back. Why groups are atomic: exact sampling at a node needs the whole candidate set
the draft chose there (multi-candidate rejection, nodes/models/tree_sampling.py); a node judged on
part of its children and judged again later would let timing pick among verdicts.

Every message is idempotent, so a link that drops, duplicates or reorders them changes only the
time: node ids are never reused, a group for a node that already has children is ignored, a group
whose parent is unknown is dropped (the edge resends its whole live tree when verdicts stall), and a
verdict is `context[start:]`, applied only for the part past what the edge already holds.

Everything a peer can make us hold is bounded: nodes in a tree, groups and nodes per message,
children per node, tokens per verdict.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

ROOT_PARENT = -1


class StreamTreeError(ValueError):
    """A message or call that breaks the stream-tree rules (one line naming what was wrong)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what a peer can make either side hold."""

    max_nodes: int = 256  # live tree nodes, the root included
    max_width: int = 8  # children per node (a miss needs the target's token outside them)
    max_groups_per_msg: int = 256
    max_verdict_tokens: int = 512

    def __post_init__(self) -> None:
        if self.max_nodes < 2 or self.max_width < 1 or self.max_groups_per_msg < 1 or self.max_verdict_tokens < 1:
            raise StreamTreeError(f"stream tree limits must be positive (max_nodes >= 2): {self}")


Group = tuple[int, tuple[tuple[int, int], ...]]  # (parent id, ((child id, token), ...))


@dataclass(frozen=True)
class NodesMsg:
    """Edge -> cloud. `root`: (id, context position, token) of the edge's root, so the cloud can name
    a restarted tree's root; `groups`: expansions, each a node's complete child list. No groups: a
    ping asking for the verdict again."""

    root: tuple[int, int, int]
    groups: tuple[Group, ...]


@dataclass(frozen=True)
class VerdictMsg:
    """Cloud -> edge: the committed context from `start` on."""

    start: int
    tokens: tuple[int, ...]


def check_nodes_msg(msg: NodesMsg, vocab_size: int, limits: Limits) -> None:
    """Refuse a malformed or oversized message before anything is stored."""
    if len(msg.groups) > limits.max_groups_per_msg:
        raise StreamTreeError(f"nodes message has {len(msg.groups)} groups, more than {limits.max_groups_per_msg}")
    _, pos, tok = msg.root
    if pos < 0 or not 0 <= tok < vocab_size:
        raise StreamTreeError(f"nodes message root {msg.root} has a negative position or a token outside "
                              "the vocabulary")
    for parent, kids in msg.groups:
        if not 1 <= len(kids) <= limits.max_width:
            raise StreamTreeError(f"node {parent} has {len(kids)} children, not 1..{limits.max_width}")
        toks = [t for _, t in kids]
        if len(set(toks)) != len(toks):
            raise StreamTreeError(f"node {parent} has repeated child tokens {toks}")
        for cid, t in kids:
            if not 0 <= t < vocab_size:
                raise StreamTreeError(f"child {cid} of node {parent} has token {t} outside 0..{vocab_size - 1}")
            if cid <= parent:
                raise StreamTreeError(f"child id {cid} is not above its parent's {parent}: ids only grow")


def children_count(probs_desc: list[float], max_width: int, cumulative: float) -> int:
    """How many of the draft's top tokens a node gets: the fewest whose probabilities sum to
    `cumulative`, at least 1, at most `max_width` (cumulative >= 1: always max_width). A function of
    the draft's distribution at the node only, so the candidate set does not depend on timing."""
    s, n = 0.0, 0
    for p in probs_desc[:max_width]:
        s += p
        n += 1
        if s >= cumulative:
            break
    return max(1, n)


@dataclass
class EdgeNode:
    parent: int
    token: int
    depth: int  # below the tree's root
    logp: float  # the draft's log path probability from the root
    children: list[int] | None = None  # None: not expanded yet


@dataclass
class Commit:
    """What a verdict did to the edge's tree: `path`: the tree nodes it committed, in order (the old
    root's children first); `restart`: the last committed token is not in the tree (a miss)."""

    path: list[int]
    restart: bool
    new_tokens: list[int]


class EdgeTree:
    """The edge's tree: best-first frontier, expansions queued for sending, pruning on verdicts."""

    def __init__(self, root_pos: int, root_token: int, limits: Limits = Limits(), lead_penalty: float = 0.0) -> None:
        self.limits = limits
        # the cloud is `lead` tokens below the root by the time an expansion sent now arrives: a node
        # shallower than that is needed only if the cloud is stuck there, so it ranks as if its path
        # were `lead_penalty` nats less probable per token of depth short of the lead
        self.lead, self.lead_penalty = 0.0, lead_penalty
        self._next_id = 0
        self.nodes: dict[int, EdgeNode] = {}
        self.outbox: list[Group] = []
        self._heap: list[tuple[float, int]] = []
        self.restarts = 0
        self._new_root(root_pos, root_token)

    def _new_root(self, pos: int, token: int) -> None:
        self.root = self._fresh()
        self.root_pos = pos
        self.nodes = {self.root: EdgeNode(ROOT_PARENT, token, 0, 0.0)}
        self._heap = [(-0.0, self.root)]
        self.outbox = []
        self.lead = 0.0

    def _fresh(self) -> int:
        self._next_id += 1
        return self._next_id

    @property
    def root_msg(self) -> tuple[int, int, int]:
        return (self.root, self.root_pos, self.nodes[self.root].token)

    @property
    def full(self) -> bool:
        return len(self.nodes) >= self.limits.max_nodes

    def priority(self, v: int) -> float:
        """Log path probability, less the penalty for depth short of the cloud's expected lead."""
        n = self.nodes[v]
        return n.logp - self.lead_penalty * max(0.0, self.lead - n.depth)

    def set_lead(self, lead: float) -> None:
        """The cloud's expected depth below the root when what is sent now arrives; re-ranks the frontier."""
        if lead != self.lead:
            self.lead = max(0.0, lead)
            self._heap = [(-self.priority(u), u) for u, n in self.nodes.items() if n.children is None]
            heapq.heapify(self._heap)

    def best(self, k: int, min_logp: float = -math.inf, last_pos: int | None = None) -> list[int]:
        """Up to k unexpanded nodes of highest priority whose path log-probability is at least
        `min_logp`, best first (taken off the frontier: the caller must expand each of them). The
        root always qualifies, so the cloud's tip is expanded once the edge knows it. A node at
        context position `last_pos` (the request's last token) or deeper never qualifies: its children
        would lie past the end, a forward of the edge's device for nothing, which also keeps the edge
        busy when the last verdict arrives."""
        out: list[int] = []
        skipped: list[tuple[float, int]] = []
        while self._heap and len(out) < k:
            item = heapq.heappop(self._heap)
            n = self.nodes.get(item[1])
            if n is None or n.children is not None:
                continue
            if last_pos is not None and self.root_pos + n.depth >= last_pos:
                skipped.append(item)  # back on the frontier: the end is the caller's to move
                continue
            (out if n.logp >= min_logp else skipped).append(item[1] if n.logp >= min_logp else item)
        for item in skipped:
            heapq.heappush(self._heap, item)
        return out

    def expand(self, v: int, tokens: list[int], probs: list[float]) -> list[int]:
        """Give node v its children (the draft's top tokens there, best first, with their draft
        probabilities); queued for sending as one group. Fewer than asked when the tree is full."""
        n = self.nodes.get(v)
        if n is None:
            raise StreamTreeError(f"expand: node {v} is not in the tree")
        if n.children is not None:
            raise StreamTreeError(f"expand: node {v} is already expanded (a node gets its children once)")
        if len(tokens) != len(probs) or not 1 <= len(tokens) <= self.limits.max_width:
            raise StreamTreeError(f"expand: {len(tokens)} tokens, {len(probs)} probabilities, "
                                  f"width 1..{self.limits.max_width}")
        room = self.limits.max_nodes - len(self.nodes)
        if room < len(tokens):  # all children or none: a partial group would change the candidate set
            heapq.heappush(self._heap, (-self.priority(v), v))
            return []
        n.children = []
        for t, p in zip(tokens, probs):
            c = self._fresh()
            lp = n.logp + math.log(max(p, 1e-30))
            self.nodes[c] = EdgeNode(v, t, n.depth + 1, lp)
            n.children.append(c)
            heapq.heappush(self._heap, (-self.priority(c), c))
        self.outbox.append((v, tuple((c, self.nodes[c].token) for c in n.children)))
        return list(n.children)

    def take_outbox(self) -> list[Group]:
        out, self.outbox = self.outbox, []
        return out

    def all_groups(self) -> list[Group]:
        """Every expansion of the live tree, parents before children (a resend after a stall)."""
        out: list[Group] = []
        stack = [self.root]
        while stack:
            v = stack.pop()
            kids = self.nodes[v].children
            if kids:
                out.append((v, tuple((c, self.nodes[c].token) for c in kids)))
                stack.extend(reversed(kids))
        return out

    def path_to(self, v: int) -> list[int]:
        """Nodes from the root (excluded) down to v (included)."""
        path = []
        while v != self.root:
            path.append(v)
            v = self.nodes[v].parent
        return path[::-1]

    def commit(self, tokens: list[int]) -> Commit:
        """Committed tokens after the root: follow them down the tree; the tree keeps only the last
        one's subtree, or restarts at the last one when any of them is not a child there (a miss costs
        a round trip; with the cloud filling its idle time, the verdict may run past the tree)."""
        v, path = self.root, []
        for t in tokens:
            kids = self.nodes[v].children or []
            nxt = next((c for c in kids if self.nodes[c].token == t), None)
            if nxt is None:  # a miss, or the cloud filled past the tree (CloudTree.fill): restart at the last
                self.restarts += 1
                self._new_root(self.root_pos + len(tokens), tokens[-1])
                return Commit(path, True, list(tokens))
            v = nxt
            path.append(v)
        if path:
            self._reroot(v, len(tokens))
        return Commit(path, False, list(tokens))

    def _reroot(self, v: int, advanced: int) -> None:
        keep: dict[int, EdgeNode] = {}
        base_depth, base_lp = self.nodes[v].depth, self.nodes[v].logp
        stack = [v]
        while stack:
            u = stack.pop()
            n = self.nodes[u]
            keep[u] = EdgeNode(n.parent, n.token, n.depth - base_depth, n.logp - base_lp, n.children)
            stack.extend(n.children or [])
        keep[v].parent = ROOT_PARENT
        self.nodes, self.root, self.root_pos = keep, v, self.root_pos + advanced
        self.lead = max(0.0, self.lead - advanced)
        self._heap = [(-self.priority(u), u) for u, n in keep.items() if n.children is None]
        heapq.heapify(self._heap)
        # groups not sent yet whose parent was pruned never need sending
        self.outbox = [g for g in self.outbox if g[0] in keep]


@dataclass
class CloudNode:
    parent: int
    token: int
    children: list[int] | None = None


@dataclass
class Admitted:
    """What a nodes message added: `new` node ids (parents before children), groups dropped as stale
    (their parent is not under the tip: a void tree, or a group overtaken by its parent's), and
    groups ignored as duplicates."""

    new: list[int] = field(default_factory=list)
    stale: int = 0
    duplicate: int = 0
    over_limit: int = 0
    followed: int = 0  # nodes walked along tokens the cloud filled, never judged
    void: bool = False  # a walk met a child set without the filled token: the tree behind is void


class CloudTree:
    """The cloud's copy: the committed context, its tip (a tree node id, or None off the tree after a
    miss or a fill) and the live tree under the tip. After fills, `behind` is the tree node at context
    position `behind_pos` < the tip's whose subtree is kept: late groups are walked down it along the
    filled tokens (context[behind_pos + 1:]) until a node reaches the tip, which becomes the tip again."""

    def __init__(self, context: list[int], limits: Limits = Limits()) -> None:
        if not context:
            raise StreamTreeError("cloud tree: empty context")
        self.limits = limits
        self.context = list(context)
        self.tip: int | None = None
        self.nodes: dict[int, CloudNode] = {}
        self.behind: int | None = None
        self.behind_pos = -1

    @property
    def tip_pos(self) -> int:
        return len(self.context) - 1

    @property
    def idle(self) -> bool:
        """Nothing to decide at the tip: off the tree, or the tip has no children yet."""
        return self.tip is None or self.nodes[self.tip].children is None

    def fill(self, token: int) -> None:
        """Commit the target's own token at an idle tip (its argmax, or a draw from its distribution):
        the position is decided here, once; the tree under the old tip is kept behind to walk late
        groups along what was filled."""
        if not self.idle:
            raise StreamTreeError(f"fill: the tip {self.tip} has children to decide")
        if self.tip is not None:
            self.behind, self.behind_pos, self.tip = self.tip, self.tip_pos, None
        self.context.append(token)

    def _adopt(self, rid: int, pos: int, tok: int) -> None:
        """Root the tree at the edge's root when the cloud is off the tree and the root lies on the
        committed path: at the tip (a restart after a miss), or behind it (after fills) and deeper
        than the node already kept behind."""
        if self.tip is not None or rid in self.nodes or not 0 <= pos <= self.tip_pos or self.context[pos] != tok:
            return
        if pos == self.tip_pos:
            self.tip, self.behind = rid, None
        elif self.behind is None or pos > self.behind_pos:
            self.behind, self.behind_pos = rid, pos
        else:
            return
        self.nodes = {rid: CloudNode(ROOT_PARENT, tok)}

    def _walk_behind(self, out: Admitted) -> None:
        """Follow the kept tree along the filled tokens while its groups have arrived: a child equal to
        the committed token is followed unjudged (that position was decided by the fill); a child set
        without it voids the tree; the node at the tip position becomes the tip."""
        while self.behind is not None and (kids := self.nodes[self.behind].children) is not None:
            want = self.context[self.behind_pos + 1]
            nxt = next((c for c in kids if self.nodes[c].token == want), None)
            if nxt is None:
                self.nodes, self.behind, out.void = {}, None, True
                return
            self._prune_to(nxt)
            self.behind, self.behind_pos = nxt, self.behind_pos + 1
            out.followed += 1
            if self.behind_pos == self.tip_pos:
                self.tip, self.behind = nxt, None

    def _prune_to(self, v: int) -> None:
        keep: dict[int, CloudNode] = {}
        stack = [v]
        while stack:
            u = stack.pop()
            keep[u] = self.nodes[u]
            stack.extend(keep[u].children or [])
        keep[v].parent = ROOT_PARENT
        self.nodes = keep

    def admit(self, msg: NodesMsg) -> Admitted:
        """Add the message's groups under the tip (or behind it, then walk them along the filled tokens)."""
        out = Admitted()
        self._adopt(*msg.root)
        for parent, kids in msg.groups:
            p = self.nodes.get(parent)
            if p is None:
                out.stale += 1
                continue
            if p.children is not None:
                out.duplicate += 1
                continue
            if len(self.nodes) + len(kids) > self.limits.max_nodes:
                out.over_limit += 1
                continue
            if any(cid in self.nodes for cid, _ in kids):  # an id reused: not a group of this tree
                out.stale += 1
                continue
            p.children = []
            for cid, t in kids:
                self.nodes[cid] = CloudNode(parent, t)
                p.children.append(cid)
                out.new.append(cid)
        self._walk_behind(out)
        if out.followed or out.void:  # nodes walked past or voided are not under the tip: not new
            out.new = [v for v in out.new if v in self.nodes and v != self.tip and self.tip is not None]
        return out

    def children(self, v: int) -> list[int] | None:
        return self.nodes[v].children

    def advance(self, child: int) -> None:
        """Commit a child of the tip and move there; prune everything not under it."""
        assert self.tip is not None and child in (self.nodes[self.tip].children or [])
        self.context.append(self.nodes[child].token)
        self._prune_to(child)
        self.tip = child

    def miss(self, token: int) -> None:
        """Commit the target's token where no child was accepted: off the tree until the edge restarts."""
        self.context.append(token)
        self.nodes, self.tip, self.behind = {}, None, None

    def verdict(self, start: int) -> VerdictMsg:
        """The committed context from `start` (what the edge holds) on, bounded."""
        start = min(max(start, 0), len(self.context))
        return VerdictMsg(start, tuple(self.context[start:start + self.limits.max_verdict_tokens]))


def unseen_part(known: int, v: VerdictMsg) -> list[int]:
    """The verdict's tokens past the `known` context length; [] for an old, duplicate or reordered
    one; a verdict starting past `known` (one before it was lost) is refused, as it cannot be placed."""
    if v.start > known:
        return []
    return list(v.tokens[known - v.start:])
