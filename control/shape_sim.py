"""Simulated requests under every speculation shape, against their own oracles (numpy only).

Round-based shapes run in a discrete-event simulation of an edge, a link and a cloud, not in the
closed forms they are checked against. The edge drafts (one compute), sends, and with rounds in
flight keeps drafting the continuation that assumes the round is kept, up to R rounds in flight and
one more drafted and held; the link delays every message by the one-way delay; the cloud verifies
rounds in order (its own compute, or the edge's with `shared_compute`: jobs run in the order they
became ready, never interrupted, a verify before a draft ready at the same instant). A round's outcome is drawn when it is verified: per depth, the
rank of the target's token among the draft's candidates from p_{d,.} (control.tree_sim); its tokens
are the accepted path plus one, and a round drafted ahead is kept when every spine node and the
prediction after it hold. A round not kept voids the rounds built on it: the cloud drops them
without compute, the edge abandons its draft and drafts anew when that verdict arrives. Without
drafting ahead the edge drafts only when nothing is in flight (one round per round trip).

The stream tree is its own model's oracle in the one respect that matters to the choice: each
token is a miss with probability m (independent of the delay) and a miss costs a whole round trip;
between misses a token costs the zero-delay compute c0; the first token waits a round trip.

Seeds give common random numbers: seed s draws the same uniforms, in order, for every shape.
`online` plays one request at a time with the shape control.shape_choice picks from estimates
(the acceptance table learned from verified rounds as control.tree_shape does, the stream tree's
misses from its own tokens, optimistic until played; the costs are the calibration's), exploring
with a probability that decays as explore / sqrt(requests).
"""
from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from control.shape_choice import Calibration, Shape, StreamTreeCalibration, ahead_round, candidates, choose
from control.shape_choice import shape_ms_per_token
from control.tree_shape import RankTable, observations
from control.tree_sim import draw_ranks, walk
from control.trees import Tree
from control.types import ControlError


@dataclass
class Played:
    """One simulated request (or a run of them): time, tokens, round trips paid on the critical path
    (misses), and the verified rounds as (tree, accepted path) for a learner."""

    ms: float = 0.0
    tokens: int = 0
    misses: int = 0
    rounds: list[tuple[Tree, list[int]]] | None = None

    @property
    def ms_per_token(self) -> float:
        return self.ms / self.tokens


class _Compute:
    """One compute: jobs booked in the order they become ready, each from max(ready, free)."""

    def __init__(self) -> None:
        self.free = 0.0

    def book(self, now: float, ms: float) -> float:
        self.free = max(now, self.free) + ms
        return self.free


def _outcome(tree: Tree, accept: np.ndarray, u: np.ndarray) -> tuple[list[int], bool]:
    """(accepted path, kept): kept = rank 1 at every depth up to the spine's and the prediction's."""
    ranks = draw_ranks(accept[: len(u)], u)
    return walk(tree, ranks[: tree.depth]), bool(np.all(ranks[: tree.depth + 1] == 1))


def play_rounds(shape: Shape, cal: Calibration, delay_ms: float, new_tokens: int, rng: np.random.Generator) -> Played:
    """One request of `new_tokens` (the last round may overshoot) under a chain or tree shape."""
    tree, ahead, r = shape.tree, shape.family.endswith("ahead"), shape.rounds
    if tree is None:
        raise ControlError("play_rounds: the stream tree is played by play_stream")
    if ahead and tree.depth + 1 > cal.accept.shape[0]:
        raise ControlError(f"{shape.label}: drafting ahead needs the table to reach depth {tree.depth + 1}")
    c = cal.cost
    if ahead:
        draft_ms, verify_ms = ahead_round(tree, c)
    else:
        draft_ms = c.draft_step_ms * tree.depth + c.draft_node_ms * tree.nodes
        verify_ms = c.verify_ms + c.verify_node_ms * tree.nodes
    edge = _Compute()
    cloud = edge if cal.shared_compute else _Compute()
    draws = tree.depth + 1 if ahead else tree.depth
    out = Played(rounds=[])
    events: list = []
    seq = 0
    epoch, next_id = 0, 0
    in_flight: deque[int] = deque()
    ready: int | None = None
    drafting: tuple[int, float] | None = None  # (round, end)
    arrived: deque[tuple[int, int]] = deque()  # (epoch, round) at the cloud, waiting
    void: set[int] = set()  # epochs whose rounds the cloud drops: a round of theirs was not kept
    verifying = False
    now = 0.0

    def push(t: float, prio: int, kind: str, *payload) -> None:
        nonlocal seq
        heapq.heappush(events, (t, prio, seq, kind, payload))
        seq += 1

    def maybe_draft() -> None:
        nonlocal drafting, next_id
        if drafting is None and ready is None and (ahead or not in_flight):
            drafting = (next_id, float("inf"))  # booked after the verifies ready at this instant
            push(now, 3, "book", epoch, next_id)
            next_id += 1

    def try_send() -> None:
        nonlocal ready
        while ready is not None and len(in_flight) < r:
            in_flight.append(ready)
            push(now + delay_ms, 0, "arrive", epoch, ready)
            ready = None
            maybe_draft()

    def cloud_next() -> None:
        nonlocal verifying
        if not verifying and arrived:
            verifying = True
            e, rid = arrived.popleft()
            push(cloud.book(now, verify_ms), 0, "verified", e, rid)

    push(0.0, 2, "start", epoch)
    while out.tokens < new_tokens:
        now, _, _, kind, payload = heapq.heappop(events)
        if kind in ("start", "book", "drafted") and payload[0] != epoch:
            continue  # a draft abandoned at a miss
        if kind == "start":
            maybe_draft()
        elif kind == "book":
            drafting = (payload[1], edge.book(now, draft_ms))
            push(drafting[1], 2, "drafted", epoch, payload[1])
        elif kind == "drafted":
            drafting, ready = None, payload[1]
            try_send()
        elif kind == "arrive":
            if payload[0] not in void:  # else voided: dropped without compute
                arrived.append(payload)
                cloud_next()
        elif kind == "verified":
            verifying = False
            path, kept = _outcome(tree, cal.accept, rng.random(draws))
            push(now + delay_ms, 1, "verdict", payload[0], payload[1], path, kept)
            if ahead and not kept:
                void.add(payload[0])  # the rounds built on it are void: no compute
                arrived.clear()
            else:
                cloud_next()
        elif kind == "verdict":
            if payload[0] != epoch:
                continue
            _, rid, path, kept = payload
            assert in_flight and in_flight[0] == rid
            in_flight.popleft()
            out.tokens += len(path) + 1
            out.rounds.append((tree, path))
            out.misses += 1 if (not ahead or not kept) else 0
            if ahead and not kept:
                epoch += 1
                in_flight.clear()
                ready = None
                if drafting is not None and edge.free == drafting[1]:
                    edge.free = now  # the draft in progress is abandoned
                drafting = None
            try_send()
            maybe_draft()
    out.ms = now
    return out


def play_stream(stream: StreamTreeCalibration, delay_ms: float, new_tokens: int, rng: np.random.Generator) -> Played:
    """One request of `new_tokens` under the stream tree (see the module)."""
    misses = int((rng.random(new_tokens) < stream.misses_per_token).sum())
    return Played(new_tokens * stream.compute_ms_per_token + 2.0 * delay_ms * (1 + misses), new_tokens, misses)


def play(shape: Shape, cal: Calibration, delay_ms: float, new_tokens: int, rng: np.random.Generator) -> Played:
    if shape.family == "stream-tree":
        if cal.stream is None:
            raise ControlError("stream tree: no calibration to simulate it with")
        return play_stream(cal.stream, delay_ms, new_tokens, rng)
    return play_rounds(shape, cal, delay_ms, new_tokens, rng)


def fixed(shape: Shape, cal: Calibration, delay_ms: float, requests: int, new_tokens: int, seed: int) -> Played:
    """`requests` requests under one shape on seed `seed`'s random numbers."""
    rng = np.random.default_rng([seed, 17])
    total = Played()
    for _ in range(requests):
        p = play(shape, cal, delay_ms, new_tokens, rng)
        total.ms, total.tokens, total.misses = total.ms + p.ms, total.tokens + p.tokens, total.misses + p.misses
    return total


def online(cal: Calibration, delay_ms: float, requests: int, new_tokens: int, seed: int, shapes: Sequence[Shape],
           explore: float = 1.0, margin: float = 0.0) -> tuple[Played, dict[str, int]]:
    """Requests one at a time, each under the shape chosen from what earlier requests showed (see
    the module); returns the total and how many requests each family got."""
    rng = np.random.default_rng([seed, 17])
    pick_rng = np.random.default_rng([seed, 23])
    table = RankTable(*cal.accept.shape)
    stream_seen = [0, 0]  # misses, tokens
    total, used = Played(), {}
    for k in range(requests):
        stream = None
        if cal.stream is not None:  # optimistic until played: a prior of no misses over one request
            m = stream_seen[0] / (stream_seen[1] + new_tokens)
            stream = StreamTreeCalibration(cal.stream.compute_ms_per_token, m, new_tokens)
        est = Calibration(table.table(), cal.cost, stream, cal.shared_compute)
        allowed = [s for s in shapes if s.family != "stream-tree" or stream is not None]
        c = choose(est, delay_ms, allowed, margin)
        shape = c.pick
        if pick_rng.random() < min(1.0, explore / np.sqrt(k + 1)):
            family = list(c.best_by_family)[pick_rng.integers(len(c.best_by_family))]
            shape = c.best_by_family[family][0]
        p = play(shape, cal, delay_ms, new_tokens, rng)
        if shape.family == "stream-tree":
            stream_seen[0] += p.misses
            stream_seen[1] += p.tokens
        for tree, path in p.rounds or ():
            table.update(observations(tree, path))
        total.ms, total.tokens, total.misses = total.ms + p.ms, total.tokens + p.tokens, total.misses + p.misses
        used[shape.family] = used.get(shape.family, 0) + 1
    return total, used


def shortlist(cal: Calibration, delay_ms: float, shapes: Sequence[Shape], per_family: int = 2) -> list[Shape]:
    """The `per_family` best of each family by its model at this delay: the fixed shapes a best
    fixed shape in hindsight is taken from."""
    priced = sorted(((float(shape_ms_per_token(s, cal, delay_ms)), s.key(), s) for s in shapes), key=lambda x: x[:2])
    out: list[Shape] = []
    for f in dict.fromkeys(s.family for s in shapes):
        out += [s for _, _, s in priced if s.family == f][:per_family]
    return out


def compare(cal: Calibration, delays_ms: Sequence[float], requests: int = 100, new_tokens: int = 64, seeds: int = 4,
            max_nodes: int = 16, max_rounds: int = 5, explore: float = 1.0, margin: float = 0.0) -> dict:
    """Per delay, on the same seeds: every shortlisted fixed shape (realized and modelled ms/token),
    the best of them in hindsight, the model's pick, and the online chooser against both."""
    if requests < 1 or seeds < 1 or new_tokens < 1:
        raise ControlError(f"shape simulation: requests, seeds and new tokens must be >= 1, got {requests}, {seeds}, "
                           f"{new_tokens}")
    shapes = candidates(cal, max_nodes=max_nodes, max_rounds=max_rounds)
    rows = []
    for delay in delays_ms:
        pick = choose(cal, delay, shapes, margin).pick
        short = shortlist(cal, delay, shapes)
        if pick not in short:
            short.append(pick)
        realized = {s: float(np.mean([fixed(s, cal, delay, requests, new_tokens, k).ms_per_token
                                      for k in range(seeds)])) for s in short}
        best = min(short, key=lambda s: (realized[s], s.key()))
        runs = [online(cal, delay, requests, new_tokens, k, shapes, explore, margin) for k in range(seeds)]
        online_ms = float(np.mean([p.ms_per_token for p, _ in runs]))
        used: dict[str, int] = {}
        for _, u in runs:
            for f, n in u.items():
                used[f] = used.get(f, 0) + n
        rows.append({
            "delay_ms": delay,
            "fixed": [{"shape": s.label, "family": s.family, "ms_per_token": round(realized[s], 3),
                       "modelled_ms_per_token": round(float(shape_ms_per_token(s, cal, delay)), 3)} for s in short],
            "best_in_hindsight": {"shape": best.label, "family": best.family, "ms_per_token": round(realized[best], 3)},
            "model_pick": {"shape": pick.label, "family": pick.family, "ms_per_token": round(realized[pick], 3)},
            "online": {"ms_per_token": round(online_ms, 3),
                       "gap_to_hindsight_pct": round(100.0 * (online_ms / realized[best] - 1.0), 2),
                       "requests_per_family": used},
        })
    return {"requests": requests, "new_tokens": new_tokens, "seeds": seeds, "shared_compute": cal.shared_compute,
            "rows": rows}
