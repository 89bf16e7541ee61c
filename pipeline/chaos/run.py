"""`specstop chaos`: each fault on its own, during a concurrent greedy workload, checked
against target-only outputs.

The workload keeps sending requests (cycling real prompts, greedy, `auto`)
until the fault is over and `concurrency` more requests have started after
it, so requests straddle the fault and some begin after recovery. Every
completed output is compared token for token with target-only decoding of
its prompt (computed here, in-process). Per fault: requests completed, failed
with a clear error (a known error code), outputs differing from target-only,
stream tokens that came late (by resync after a lost chunk) or were retracted,
and the recovery time: the longest pause in chunk arrivals from the fault on.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict

from nodes.models.loading import load_pair
from nodes.speculative import target_only_generate
from pipeline.transport import aio, bus
from pipeline.chaos.faults import DESCRIPTIONS, FAULTS, ChaosCluster, ChaosConfig, FaultInfo
from pipeline.chaos.fuzz import targets
from pipeline.chaos.garbage import fuzz_subject
from pipeline.transport.client import StreamResult, generate_stream
from pipeline.errors import PipelineError
from pipeline.orchestration.run_dirs import new_run_dir
from pipeline.orchestration.workload import workload_prompts
from schemas import subjects
from schemas.messages import ERROR_CODES, GenerateRequest

CLEAR_CODES = set(ERROR_CODES) | {"no_responders", "edge_gone"}


def check_config(cfg: ChaosConfig) -> None:
    unknown = [f for f in cfg.faults if f not in FAULTS and f != "garbage"]
    if unknown:
        raise PipelineError(f"chaos: unknown fault(s) {', '.join(unknown)} (known: garbage, {', '.join(FAULTS)})")
    if cfg.stall_s <= cfg.request_timeout_s:
        raise PipelineError("chaos: --stall-s must exceed --request-timeout (the stall must outlast a timeout)")
    if cfg.replacement_delay_s >= cfg.failover_deadline_s:
        raise PipelineError("chaos: --replacement-delay must be shorter than --failover-deadline")


async def _workload(nc, prompts: list[str], cfg: ChaosConfig, fault_over: asyncio.Event,
                    tag: str) -> list[tuple[int, StreamResult]]:
    gate = asyncio.Semaphore(cfg.concurrency)
    tasks: list[asyncio.Task] = []
    after = 0

    async def one(i: int) -> tuple[int, StreamResult]:
        try:
            req = GenerateRequest(f"{tag}-{i}", prompt=prompts[i % len(prompts)], max_new_tokens=cfg.max_new_tokens,
                                  policy="auto")
            return i, await generate_stream(nc, req, timeout_s=90.0, wait_for_edge_s=60.0)
        finally:
            gate.release()

    i = 0
    while i < cfg.max_requests:
        await gate.acquire()
        if fault_over.is_set():
            after += 1
        if i >= cfg.requests and after > cfg.concurrency:
            gate.release()
            break
        tasks.append(asyncio.create_task(one(i)))
        i += 1
    return list(await asyncio.gather(*tasks))


def _recovery_s(results: list[tuple[int, StreamResult]], since: float, until: float) -> float | None:
    """Longest pause in chunk arrivals (any stream) from `since` on, measured up to the last arrival."""
    arrivals = sorted(t for _, r in results for t in r.chunk_mono if t >= since)
    if not arrivals:
        return None
    gaps = [arrivals[0] - since] + [b - a for a, b in zip(arrivals, arrivals[1:]) if a <= until + 5.0]
    return round(max(gaps), 3)


def _judge(name: str, info: FaultInfo, results: list[tuple[int, StreamResult]], refs: list[list[int]],
           prompts: list[str]) -> dict:
    completed = [(i, r) for i, r in results if r.ok]
    failed = [(i, r) for i, r in results if not r.ok]
    clear = [r for _, r in failed if r.error_code in CLEAR_CODES and r.error]
    differing = [i for i, r in completed if r.token_ids != refs[i % len(prompts)]]
    row = {
        "fault": name, "what": DESCRIPTIONS[name], "requests": len(results), "completed": len(completed),
        "failed_clear": len(clear), "failed_unclear": len(failed) - len(clear),
        "outputs_differing": len(differing),
        "stream_tokens_lost": sum(max(0, len(refs[i % len(prompts)]) - len(r.token_ids)) for i, r in completed),
        "stream_tokens_retracted": sum(r.retracted_tokens for _, r in results),
        "stream_tokens_late": sum(r.late_tokens for _, r in results),
        "chunks_missed_then_resynced": sum(len(r.missing_seqs) for _, r in completed),
        "duplicate_chunks_ignored": sum(len(r.duplicate_seqs) for _, r in results),
        "recovery_s": _recovery_s(results, info.started, info.ended),
        "fault_s": round(info.ended - info.started, 3),
        "errors": sorted({(r.error or "")[:160] for _, r in failed})[:4],
        **info.notes,
    }
    clean = row["outputs_differing"] == 0 and row["stream_tokens_retracted"] == 0 and row["stream_tokens_lost"] == 0
    if info.expect_unreachable:
        row["ok"] = clean and row["failed_unclear"] == 0
        row["expected"] = "clear errors, no wrong output"
    else:
        row["ok"] = clean and row["completed"] == row["requests"]
        row["expected"] = "every request completes, output = target-only"
    return row


async def _garbage(cl: ChaosCluster, cfg: ChaosConfig) -> FaultInfo:
    info = FaultInfo(time.monotonic())
    nc = await bus.connect(cl.url, "chaos-fuzz", long_lived=False)
    try:
        reports = [await fuzz_subject(nc, t, cfg.fuzz_count, cfg.seed)
                   for t in targets(cl.nodes["edge"].node_id, cl.nodes["cloud"].node_id, max_length=cfg.max_length)]
    finally:
        await nc.close()
    info.ended = time.monotonic()
    info.notes["subjects"] = [r.as_dict() for r in reports]
    info.notes["workers_alive"] = cl.alive()
    return info


async def _one_fault(name: str, cl: ChaosCluster, cfg: ChaosConfig, prompts: list[str],
                     refs: list[list[int]]) -> dict:
    nc = await bus.connect(cl.url, f"chaos-client-{name}", long_lived=True)
    updates: list[float] = []

    async def on_update(msg) -> None:
        updates.append(time.monotonic())

    upd_sub = await nc.subscribe(f"{subjects.POLICY_PREFIX}.>", cb=on_update)
    fault_over = asyncio.Event()
    work = asyncio.create_task(_workload(nc, prompts, cfg, fault_over, f"chaos-{name}"))
    try:
        await asyncio.sleep(cfg.inject_after_s)
        info = await (_garbage(cl, cfg) if name == "garbage" else FAULTS[name](cl, cfg))
        fault_over.set()
        results = await work
    finally:
        fault_over.set()
        await upd_sub.unsubscribe()
        await nc.close()
    row = _judge(name, info, results, refs, prompts)
    if name == "controller-kill":
        after = [t for t in updates if t > info.ended]
        row["first_update_after_restart_s"] = round(after[0] - info.ended, 3) if after else None
        row["ok"] = row["ok"] and bool(after)
    if name == "garbage":
        row["ok"] = row["ok"] and all(info.notes["workers_alive"].values()) and all(
            s["exactly_one_reply"] == s["with_reply"] and s["more_than_one_reply"] == 0 for s in info.notes["subjects"])
    row["workers_alive_after"] = cl.alive()
    return row


def chaos(cfg: ChaosConfig, progress=None) -> dict:
    check_config(cfg)
    run_dir = new_run_dir(cfg.run_root)
    say = progress or (lambda text: None)
    t0 = time.perf_counter()
    say("computing target-only references")
    pair = load_pair(load_draft=False)
    prompts = workload_prompts(max(cfg.requests, 8), seed=cfg.seed)
    refs = [target_only_generate(pair, pair.tokenizer.encode(p, add_special_tokens=False), cfg.max_new_tokens).token_ids
            for p in prompts]
    say("starting broker, verifier, edge, controller")
    cl = ChaosCluster(run_dir, cfg)
    rows = []
    try:
        cl.start()
        for name in cfg.faults:
            say(f"fault: {name}")
            rows.append(aio.run(_one_fault(name, cl, cfg, prompts, refs)))
    finally:
        cl.stop()
    out = {"run_dir": str(run_dir), "config": asdict(cfg), "faults": rows, "ok": all(r["ok"] for r in rows),
           "wall_s": round(time.perf_counter() - t0, 1)}
    (run_dir / "chaos.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def render(out: dict) -> str:
    cols = [("fault", 16), ("requests", 8), ("completed", 9), ("failed_clear", 12), ("failed_unclear", 14),
            ("outputs_differing", 17), ("stream_tokens_lost", 18), ("stream_tokens_late", 18), ("recovery_s", 10),
            ("ok", 5)]
    lines = [f"specstop chaos: {len(out['faults'])} faults, logs in {out['run_dir']} ({out['wall_s']} s)",
             "  ".join(name.ljust(w) for name, w in cols)]
    for r in out["faults"]:
        lines.append("  ".join(str(r.get(name)).ljust(w) for name, w in cols))
    for r in out["faults"]:
        if r["errors"]:
            lines.append(f"  {r['fault']} errors: {'; '.join(r['errors'])}")
        if r["fault"] == "garbage":
            for s in r["subjects"]:
                lines.append(f"  garbage {s['subject']}: {s['sent']} sent, {s['exactly_one_reply']}/{s['with_reply']}"
                             f" with exactly one reply")
    lines.append("all faults passed their checks" if out["ok"] else "SOME FAULTS FAILED THEIR CHECKS")
    return "\n".join(lines)
