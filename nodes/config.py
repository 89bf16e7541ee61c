"""The workers' configurations and their defaults, in a module without torch.

Each default is written once, here: the workers (nodes/cloud.py, nodes/edge.py, nodes/draft_batcher.py)
take these classes, and the command line (pipeline/cli/workers.py, through pipeline/orchestration/serve.py)
shows and passes on the same values, so `specstop --help` can read them without loading a model library.
"""
from __future__ import annotations

from dataclasses import dataclass

from control.trees import Tree
from nodes.protocol.admission import EdgeLimits
from nodes.protocol.calibration import MAX_CALIBRATION_ROUNDS
from nodes.protocol.liveness import HEARTBEAT_S, WINDOW_S
from nodes.protocol.request import RoundRules
from nodes.protocol.stream_tree import Limits as StreamLimits
from nodes.protocol.tree_shape import parse_tree
from nodes.protocol.verifier_table import TableConfig

_T = TableConfig()  # the verifier's session bounds live in the session table's own config
_R = RoundRules("")  # ... and a round's timing in the round's rules

DRAIN_TIMEOUT_S = 10.0  # after SIGTERM/SIGINT a worker finishes the work in hand this long, then stops
MAX_LENGTH = _R.max_length  # longest draft a worker produces or accepts
MAX_LEARNERS = 1024     # the controller's learners kept in memory (the rest wait in the bucket)
MAX_ROUNDS_IN_FLIGHT = 1 + _T.max_ahead  # --ahead's cap: one round computing, the default verifier's max_ahead waiting


def _spine_only(tree: Tree) -> bool:
    """Whether only the first child at each depth has children (DEPTHxWIDTH shapes)."""
    spine, head = set(), -1
    for i, p in enumerate(tree.parents):
        if p == head:
            spine.add(i)
            head = i
    return all(p < 0 or p in spine for p in tree.parents)


def check_ahead(value: object) -> int:
    """`--ahead R`: 1..MAX_ROUNDS_IN_FLIGHT rounds in flight per request; ValueError naming the bound."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROUNDS_IN_FLIGHT:
        raise ValueError(f"ahead must be an integer in 1..{MAX_ROUNDS_IN_FLIGHT} (rounds in flight), got {value!r}")
    return value


@dataclass(frozen=True)
class CloudConfig:
    verifier_id: str = _T.verifier_id
    max_sessions: int = _T.max_sessions
    session_ttl_s: float = _T.session_ttl_s
    max_in_flight: int = 256
    evict_idle_s: float = _T.evict_idle_s
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    max_batch: int = 32            # rounds in one batched forward
    batch_wait_ms: float = 2.0     # the longest a round waits for others to join its batch
    slot_cache: bool = True        # False: every round on the per-request path (DynamicCache)
    slot_memory_mb: int = 2048     # slot K/V budget; sessions past it run per request
    prefill_chunk: int | None = 256  # context tokens prefilled per batch (None: a whole prompt at once)
    max_sessions_per_edge: int | None = _T.max_sessions_per_edge  # None: TableConfig's derived share
    max_rounds_per_edge: int | None = _T.max_rounds_per_edge
    heartbeat_s: float = HEARTBEAT_S       # AliveMsg period
    liveness_window_s: float = WINDOW_S    # an edge heard once and then silent this long is gone
    graphs: bool | None = None     # static-shape verify (CUDA graphs); None: on for a CUDA model
    batch_invariant: bool = False  # one forward per round: verdicts independent of the batch
    trees: bool = True             # take tree drafts (schema v2); False: a chain-only verifier, which answers `version`
    max_ahead: int = _T.max_ahead  # rounds drafted ahead a session may have waiting (schema v3); 0: answers `version`
    stream_tree: bool = True       # hold stream-tree sessions (schema v4, nodes/cloud_stream); False: answers `version`
    stream_fill: bool = False      # a stream-tree session with nothing to verify decides positions itself (one forward each)

    def table(self) -> TableConfig:
        return TableConfig(self.verifier_id, self.max_sessions, self.session_ttl_s, self.evict_idle_s,
                           self.max_sessions_per_edge, self.max_rounds_per_edge, self.max_ahead)


@dataclass(frozen=True)
class DraftBatchConfig:
    max_batch: int = 64          # rows in one draft step
    wait_ms: float = 2.0         # the longest a round waits for others before a drive starts
    slot_cache: bool = True      # False: every request drafts on the per-request path
    max_len: int = 8192          # tokens one slot may hold
    max_slots: int = 256
    memory_mb: int = 1024        # slot K/V budget; requests past it draft per request
    join_steps: int = 16         # a drive takes new rounds during its first steps only
    prefill_chunk: int | None = 256  # a new context's tokens per model-thread job (None: all at once)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.wait_ms < 0 or self.join_steps < 1:
            raise ValueError("draft max_batch and join_steps must be >= 1, wait_ms >= 0")


@dataclass(frozen=True)
class StreamShape:
    """The edge's stream-tree knobs (`edge --stream-tree`; the in-process reference's defaults,
    docs/stream-tree.md)."""

    width: int = 2
    cumulative: float = 0.8
    batch: int = 16
    flush_ms: float = 1.0
    min_path_prob: float = 1e-4
    lead_penalty: float = 2.0
    resend_after_s: float | None = None  # None: max(1 s, 20 x the one-way delay)
    auto: bool = False  # per request, the stream tree or rounds by the cost rule (control/stream_choice.py)
    width_auto: bool = False  # per request, the width learned from this edge's requests (control/stream_width.py),
    # starting at `width`

    def __post_init__(self) -> None:
        top = StreamLimits().max_width
        if not 1 <= self.width <= top or self.batch < 1 or self.flush_ms < 0 or not 0 < self.cumulative:
            raise ValueError(f"stream tree: need width 1..{top}, batch >= 1, flush_ms >= 0, cumulative > 0: {self}")


def check_calibration(rounds: int, other_shape: bool) -> None:
    """--calibrate-rounds: 0..MAX_CALIBRATION_ROUNDS, and chain rounds only (a tree's, a pipelined or a
    streamed round's time is not a chain length's)."""
    if type(rounds) is not int or not 0 <= rounds <= MAX_CALIBRATION_ROUNDS:
        raise ValueError(f"--calibrate-rounds must be in 0..{MAX_CALIBRATION_ROUNDS}, got {rounds!r}")
    if rounds and other_shape:
        raise ValueError("--calibrate-rounds times chain rounds: not with --tree, --ahead or --stream-tree")


@dataclass(frozen=True, kw_only=True)
class EdgeConfig:
    edge_id: str = "edge-1"
    default_policy: str = "auto"
    max_length: int = MAX_LENGTH
    request_timeout_s: float = _R.request_timeout_s
    failover_deadline_s: float = _R.failover_deadline_s
    seed: int = 0
    limits: EdgeLimits = EdgeLimits()
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    drafting: DraftBatchConfig = DraftBatchConfig()
    place_sessions: bool = True  # new sessions start on the least loaded verifier known (nodes/protocol/placement)
    heartbeat_s: float = HEARTBEAT_S       # AliveMsg period, and a silent client's keepalive period
    liveness_window_s: float = WINDOW_S    # a verifier not heard from this long is avoided
    tree: Tree | str | None = None  # draft trees: a shape, "DxW", "auto" (best for the told delay), None: chains
    ahead: int = 1  # rounds in flight per request (proactive drafting, docs/pipelining.md); 1: one round per trip
    stream_tree: StreamShape | None = None  # the continuous speculation tree instead of rounds (nodes/edge_stream)
    calibrate_rounds: int = 0  # timed start-up rounds per draft length (nodes/protocol/calibration.py); 0: none

    def __post_init__(self) -> None:
        if isinstance(self.tree, str):  # "4x2" / "auto" / "off" -> a Tree, AUTO or None (ControlError if neither)
            object.__setattr__(self, "tree", parse_tree(self.tree))
        check_ahead(self.ahead)
        check_calibration(self.calibrate_rounds, self.tree is not None or self.ahead > 1 or self.stream_tree is not None)
        if self.ahead > 1 and isinstance(self.tree, Tree) and not _spine_only(self.tree):
            raise ValueError("--ahead with a tree needs a spine shape (only the rank-1 path has children): a "
                             "round is kept when its spine is, and no other path may reach the spine's depth")

    def rules(self) -> RoundRules:
        return RoundRules(self.edge_id, self.max_length, self.request_timeout_s, self.failover_deadline_s)
