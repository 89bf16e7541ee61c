"""`bench trees --live` with the stream tree: its references, the modelled cloud streaming, checks, refusals.

The stream tree is measured against today's best single-chain policy, two ways: the best fixed
length in hindsight (the chain row of least ms/token among the fixed lengths run) and `auto` (the
edge's default policy, learned online). Its ratio to the cloud streaming its own generation is
reported too, modelled on the emulated cloud device (one target forward of one position per token:
a stream pays the link once, not per token), so a run says honestly whether speculating at all beats
leaving the edge out. The checks name their reference and their goal and hold either way (a ratio
far above the goal is listed, not hidden); the refusals say when the numbers are not a result: rows
that produced different tokens, or devices the machine could not keep up with (a forward whose real
compute took longer than the emulated device's time runs on this machine's clock).
"""
from __future__ import annotations

from pipeline.analysis.frames import rounds_frame
from pipeline.experiments.refusals import MAX_OVERRUN_SHARE, Refusal, emulation_overruns

GOAL_AT_DELAY = 1.5  # the goal at 50 ms one-way: ms/token 1.5x better than the best single chain
GOAL_AT_ZERO = 1.0   # at zero delay: never worse than today


def stream_overrun_share(done: list[dict], ends: list[dict]) -> float | None:
    """Share of a stream row's emulated forwards (the edge's drafts from `stream_done`, the verifier's
    from its `session_end`) whose real compute outran the device; None without any counted."""
    over = sum(d.get("draft_overruns", 0) for d in done) + sum(e.get("verify_overruns", 0) for e in ends)
    total = sum(d.get("draft_forwards", 0) for d in done) + sum(e.get("verify_forwards", 0) for e in ends)
    return over / total if total else None


def chain_overruns(rounds: list[dict], emulation: dict | None) -> Refusal | None:
    """A chain row's rounds computed slower than the emulated devices (pipeline/experiments/refusals.py)."""
    return emulation_overruns(rounds_frame(rounds), emulation) if rounds else None


def cloud_streaming_ms(emulation: dict | None) -> float | None:
    """The cloud streaming its own generation on the emulated cloud device: one forward of one
    position per token (the one-way delay is paid once per request, not per token)."""
    cloud = (emulation or {}).get("cloud")
    if not cloud or cloud.get("verify_ms_fixed") is None:
        return None
    return round(cloud["verify_ms_fixed"] + (cloud.get("verify_ms_per_token") or 0.0), 3)


def stream_summary(rows: list[dict], delay_ms: float, emulation: dict | None) -> dict:
    """The stream-tree rows against the best fixed chain in hindsight and chain auto, and the
    cloud streaming (modelled on the emulated cloud; None without one); the checks against the goal."""
    ms = {r["row"]: r["ms_per_token_median"] for r in rows}
    streams = [r for r in rows if r["tree"].startswith("stream:") and not r["tree"].endswith(":auto")]
    is_stream = [r["row"] for r in streams if not r["tree"].endswith(":fill")]
    is_fill = [r["row"] for r in streams if r["tree"].endswith(":fill")]
    fixed = [r["row"] for r in rows if r["tree"] == "off" and r["ahead"] == 1 and r["policy"].startswith("fixed:")]
    if not streams or not fixed:
        return {}
    best_fixed = min(fixed, key=ms.get)
    goal = GOAL_AT_DELAY if delay_ms > 0 else GOAL_AT_ZERO
    refs = {"best_fixed_chain": best_fixed, **({"chain_auto": "chain auto"} if "chain auto" in ms else {})}

    def checks(row: str) -> list[dict]:
        return [{"check": f"{ref} / {row} >= {goal:g}", "reference": name, "reference_row": ref,
                 "ratio": round(ms[ref] / ms[row], 3), "goal": goal, "met": ms[ref] / ms[row] >= goal}
                for name, ref in refs.items()]

    streaming = cloud_streaming_ms(emulation)
    out: dict = {"best_fixed_chain": best_fixed, "cloud_streaming_ms_per_token_modelled": streaming}
    if streaming is not None:
        out["best_fixed_chain_vs_cloud_streaming"] = round(ms[best_fixed] / streaming, 3)
    if is_stream:  # speculation: the edge's tree verified as it grows
        best_stream = min(is_stream, key=ms.get)
        out |= {"best_stream_tree": best_stream, "stream_checks": checks(best_stream)}
        if streaming is not None:
            out["best_stream_tree_vs_cloud_streaming"] = round(ms[best_stream] / streaming, 3)
    if is_fill:  # the cloud also decides positions itself while idle: apart, since it is not speculation
        best_fill = min(is_fill, key=ms.get)
        row = next(r for r in rows if r["row"] == best_fill)
        out |= {"best_stream_tree_fill": best_fill, "stream_fill_checks": checks(best_fill),
                "best_stream_tree_fill_filled_per_token": row.get("filled_per_token")}
        if streaming is not None:
            out["best_stream_tree_fill_vs_cloud_streaming"] = round(ms[best_fill] / streaming, 3)
    return out


def refusals(rows: list[dict], same_output: bool) -> list[dict]:
    """Why a run's numbers are not a result (empty: they are)."""
    out = []
    if not same_output:
        out.append(Refusal("different_output", "rows produced different tokens (greedy output must not "
                                               "depend on the shape)"))
    for r in rows:
        share = r.get("emulation_overrun_share")
        if share is not None and share > MAX_OVERRUN_SHARE:
            out.append(Refusal("machine_load", f"{r['row']}: {100 * share:.1f} % of forwards computed slower than "
                                               f"the emulated devices (at most {100 * MAX_OVERRUN_SHARE:g} %)"))
        elif r.get("emulation_refusal"):
            out.append(Refusal("machine_load", f"{r['row']}: {r['emulation_refusal']}"))
    return [x.to_dict() for x in out]
