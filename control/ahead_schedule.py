"""Exact expected ms/token of R rounds in flight, from the edge's real schedule (numpy only).

control.proactive_cost prices every kept round at one period P = max(draft, verify, (2d + verify)/R):
the round trip spread evenly over the R rounds in flight. The edge does not spread it. After a
miss it drafts round 1, and while fewer than R rounds are in flight it sends each next round as soon
as it is drafted (one more may wait drafted, `ready`, as nodes/models/pipelined.py and
nodes/edge_ahead.py do); so the verdicts of a run come in bursts: R verdicts a draft (or verify)
apart, then a gap until the first freed slot's round comes back. A run ends at its first round that
is not kept, and with kappa = P(kept) well below 1 most runs end inside the first burst, where
kept rounds cost a draft, not (2d + verify)/R: the even spread overprices R >= 2 (exact for R = 1).

The schedule of a run where every round is kept is deterministic (round j, 1-based):
  draft_start[j] = max(draft_end[j-1], send[j-1])            (one round waits drafted, no more)
  draft_end[j]   = draft_start[j] + draft
  send[j]        = max(draft_end[j], verdict[j-R])             (a slot frees when a verdict arrives)
  verify_end[j]  = max(send[j] + d, verify_end[j-1]) + verify  (the cloud verifies in order)
  verdict[j]     = verify_end[j] + d
and a run reaches round j with probability kappa**(j-1). By Wald's identity (the run's length is a
stopping time of i.i.d. rounds) ms/token = E[run time] / (E[rounds per run] * tokens per round):
  ms/token = (1 - kappa) * sum_j kappa**(j-1) * (verdict[j] - verdict[j-1]) / tokens_per_round
with verdict[0] = 0. A draft in progress when a miss arrives is abandoned (the next run starts at
the miss's verdict). With `shared_compute` draft and verify take turns on one compute (both models
in one process, bound by one interpreter lock, as in the in-process bench): the job ready first runs
first, a verify before a draft on ties (it is on the critical path), neither interrupted; then a
round drafted ahead cannot hide its draft, and at zero delay it only adds the prediction's step.
"""
from __future__ import annotations

import numpy as np

from control.types import ControlError

MAX_ROUNDS = 4096  # a run reaches round j with kappa**(j-1); past this the tail is priced at the mean gap


def verdict_times(draft_ms: float, verify_ms: float, one_way_ms: float, rounds_in_flight: int, n: int,
                  shared_compute: bool = False) -> np.ndarray:
    """verdict[1..n] of a run whose rounds are all kept, from the run's start (see the module)."""
    if rounds_in_flight < 1 or n < 1:
        raise ControlError(f"schedule: rounds in flight and rounds must be >= 1, got {rounds_in_flight}, {n}")
    if min(draft_ms, verify_ms, one_way_ms) < 0 or not np.isfinite([draft_ms, verify_ms, one_way_ms]).all():
        raise ControlError(f"schedule: times must be finite and >= 0, got {draft_ms}, {verify_ms}, {one_way_ms}")
    if shared_compute:
        return _shared_verdict_times(draft_ms, verify_ms, one_way_ms, rounds_in_flight, n)
    verdict = np.empty(n)
    draft_end = send = verify_end = 0.0
    for j in range(n):
        start = max(draft_end, send) if j else 0.0
        draft_end = start + draft_ms
        send = max(draft_end, verdict[j - rounds_in_flight] if j >= rounds_in_flight else 0.0)
        verify_end = max(send + one_way_ms, verify_end) + verify_ms
        verdict[j] = verify_end + one_way_ms
    return verdict


def _shared_verdict_times(draft_ms: float, verify_ms: float, one_way_ms: float, r: int, n: int) -> np.ndarray:
    """The same schedule with draft and verify on one compute: the job ready first runs first."""
    inf = float("inf")
    draft_end, send, verdict = np.full(n, inf), np.full(n, inf), np.full(n, inf)
    free = verify_end = 0.0
    nd = nv = ns = 0  # next draft, verify, send
    while nv < n:
        draft_ready = inf
        if nd < n and (nd == 0 or send[nd - 1] < inf):
            draft_ready = 0.0 if nd == 0 else max(draft_end[nd - 1], send[nd - 1])
        verify_ready = max(send[nv] + one_way_ms, verify_end) if send[nv] < inf else inf
        if verify_ready <= draft_ready:
            verify_end = max(verify_ready, free) + verify_ms
            free, verdict[nv] = verify_end, verify_end + one_way_ms
            nv += 1
        else:
            free = draft_end[nd] = max(draft_ready, free) + draft_ms
            nd += 1
        while ns < nd and (ns < r or verdict[ns - r] < inf):  # rounds go out in order, as slots free
            send[ns] = max(draft_end[ns], verdict[ns - r] if ns >= r else 0.0)
            ns += 1
    return verdict


def run_ms_per_token(draft_ms: float, verify_ms: float, one_way_ms: float, rounds_in_flight: int,
                     kappa: float, tokens_per_round: float, shared_compute: bool = False) -> float:
    """Expected ms per token with `rounds_in_flight` rounds drafted ahead, each kept with `kappa`
    and bringing `tokens_per_round` on average; `draft_ms` is a round's whole draft (its
    prediction for the next round included)."""
    if not 0.0 <= kappa <= 1.0:
        raise ControlError(f"schedule: kappa={kappa} outside [0, 1]")
    if tokens_per_round <= 0:
        raise ControlError(f"schedule: tokens per round must be > 0, got {tokens_per_round}")
    n = MAX_ROUNDS  # enough rounds that the rest of the run carries under 1e-12 of the weight
    if 0.0 < kappa < 1.0:
        n = int(min(MAX_ROUNDS, max(8 * rounds_in_flight, np.ceil(np.log(1e-12) / np.log(kappa)))))
    elif kappa == 0.0:
        n = rounds_in_flight
    v = verdict_times(draft_ms, verify_ms, one_way_ms, rounds_in_flight, n, shared_compute)
    gaps = np.diff(v, prepend=0.0)
    w = kappa ** np.arange(n, dtype=float)
    if kappa >= 1.0 - 1e-12:  # runs never end: the steady state, one cycle of R gaps at a time
        return float(gaps[-rounds_in_flight:].mean() / tokens_per_round)
    tail = w[-1] * kappa / (1.0 - kappa) * float(gaps[-rounds_in_flight:].mean())  # rounds past MAX_ROUNDS
    return float((1.0 - kappa) * (np.dot(w, gaps) + tail) / tokens_per_round)
