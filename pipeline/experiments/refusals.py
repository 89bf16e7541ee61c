"""When an experiment's numbers cannot be trusted, it says so instead of reporting them.

A live experiment emulates devices on a shared 2-core machine. The machine can
break the emulation (real compute longer than the device's time, or event
loops and the broker adding milliseconds to every round outside the emulated
clock), a grid can leave lines too close to separate, and a run can end with
too few rounds or failed requests. Then a critical delay of 0.0 ms, or a
ratio of None, is not a measurement: each check here returns a `Refusal`
(which check, one line why), the experiment's JSON keeps the numbers and the
refusals side by side, the report shows them, and the CLI exits non-zero with
the reasons on one line. Pure functions of the run's rounds and results.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

MAX_OVERRUN_SHARE = 0.05    # rounds whose real compute outran the emulated device
MAX_OVERHEAD_MS = 6.0       # median per-round time outside the devices and the link (quiet machine: 1-3 ms)
MAX_FAILED_SHARE = 0.02     # requests that ended in an error
MAX_DEGENERATE_SHARE = 0.2  # bootstrap resamples in which the lines do not cross inside the grid
MIN_ROUNDS_PER_CELL = 20
SLACK_MS = 0.5              # timer and rounding slack on an emulated duration


@dataclass(frozen=True)
class Refusal:
    check: str   # machine_load | lines_too_close | no_transition | too_few_rounds | failed_requests
    why: str     # one line, for a person

    def to_dict(self) -> dict:
        return asdict(self)


def summary(refusals: list[Refusal]) -> str:
    """The CLI's one line."""
    return "; ".join(f"{r.check}: {r.why}" for r in refusals)


def emulation_overruns(rounds: pl.DataFrame, emulation: dict | None) -> Refusal | None:
    """Rounds whose emulated draft or verify time exceeds the device's (jitter included): the real
    compute (or waiting for this machine's CPU) took longer, so the round ran on this machine's clock."""
    if not emulation or rounds.is_empty():
        return None
    over = np.zeros(rounds.height, dtype=bool)
    L = rounds["draft_length"].to_numpy()
    # the edge's device drafts a tree in one batched step per depth (nodes/edge.py paces draft_steps)
    steps = (rounds["tree_depth"].fill_null(rounds["draft_length"]) if "tree_depth" in rounds.columns
             else rounds["draft_length"]).to_numpy()
    edge, cloud = emulation.get("edge"), emulation.get("cloud")
    if edge and edge.get("draft_ms_per_token") is not None:
        target = np.where(L > 0, edge.get("draft_ms_fixed", 0.0) + edge["draft_ms_per_token"] * steps, 0.0)
        over |= rounds["draft_ms"].to_numpy() > target * (1 + edge.get("jitter", 0.0)) + SLACK_MS
    if cloud and cloud.get("verify_ms_fixed") is not None and not cloud.get("shared"):
        target = cloud["verify_ms_fixed"] + cloud.get("verify_ms_per_token", 0.0) * (L + 1)
        # prefill is not emulated: rounds that built a session (the first, a resend) run longer by design
        steady = ((rounds["round"] > 0) & ~rounds["context_resent"].fill_null(False)).to_numpy()
        over |= steady & (rounds["verify_ms"].to_numpy() > target * (1 + cloud.get("jitter", 0.0)) + SLACK_MS)
    share = float(over.mean())
    if share > MAX_OVERRUN_SHARE:
        return Refusal("machine_load", f"{100 * share:.1f} % of rounds computed slower than the emulated devices "
                                       f"(at most {100 * MAX_OVERRUN_SHARE:g} %): the machine is too loaded for the grid")
    return None


def transport_overhead(rounds: pl.DataFrame) -> Refusal | None:
    """The median per-round time spent outside the emulated devices and link (event loops, broker,
    queues on this machine). It adds to every round like extra delay, and a loaded machine moves it."""
    if rounds.is_empty():
        return None
    extra = (rounds["network_ms"] - rounds["link_ms"].fill_null(0.0)).to_numpy()
    med = float(np.median(extra))
    if med > MAX_OVERHEAD_MS:
        return Refusal("machine_load", f"rounds spent a median {med:.1f} ms outside the emulated devices and link "
                                       f"(at most {MAX_OVERHEAD_MS:g} ms; a quiet machine: 1-3 ms): the machine is too "
                                       "loaded for the grid")
    return None


def failed_requests(failed: int, total: int) -> Refusal | None:
    if total and failed / total > MAX_FAILED_SHARE:
        return Refusal("failed_requests", f"{failed} of {total} requests failed (at most "
                                          f"{100 * MAX_FAILED_SHARE:g} %): see the run's logs")
    return None


def too_few_rounds(counts: dict[str, int], minimum: int = MIN_ROUNDS_PER_CELL) -> Refusal | None:
    """`counts`: rounds per cell (a label each)."""
    thin = sorted((n, cell) for cell, n in counts.items() if n < minimum)
    if thin:
        n, cell = thin[0]
        return Refusal("too_few_rounds", f"{len(thin)} cell(s) have fewer than {minimum} rounds (fewest: {cell} "
                                         f"with {n})")
    return None


def crossing_refusals(measured: float | None, predicted: float | None, boot_measured: list[float | None]
                      ) -> list[Refusal]:
    """A critical delay that is not there (no crossing, or L >= 2 already best at zero delay), or one the
    bootstrap cannot pin (the lines too close to separate)."""
    out = []
    for name, v in (("measured", measured), ("predicted", predicted)):
        if v is None or not np.isfinite(v):
            out.append(Refusal("no_transition", f"{name}: no length >= 2 overtakes one token on the grid"))
        elif v <= 0.0:
            out.append(Refusal("no_transition", f"{name}: a length >= 2 is already best at zero delay (critical "
                                                "delay 0): there is no transition to compare"))
    if boot_measured and not out:  # a crossing that is there but that resampling cannot pin
        bad = sum(1 for x in boot_measured if x is None or not np.isfinite(x) or x <= 0.0) / len(boot_measured)
        if bad > MAX_DEGENERATE_SHARE:
            out.append(Refusal("lines_too_close", f"in {100 * bad:.0f} % of bootstrap resamples the measured lines "
                                                  "do not cross above zero delay: the lines are too close to separate "
                                                  "with this many rounds"))
    return out
