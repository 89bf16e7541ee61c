"""Where model compute runs, how emulated delays are slept, which event loop runs the workers."""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import threading

import pytest

from pipeline.transport.worker_base import WorkerBase
from pipeline.transport import aio
from nodes.link import LinkTimer


def _where() -> int:
    return threading.get_ident()


async def test_compute_runs_inline_when_the_worker_has_one_request():
    w = WorkerBase(None, None, "model", 8)
    got = []

    async def handler():
        got.append((await w.run_model(_where, alone=True))[0])

    await w.spawn(handler())
    await asyncio.gather(*w.tasks)
    assert got == [threading.get_ident()] and w.inline_calls == 1
    await w.stop()


async def test_compute_moves_to_the_model_thread_while_requests_overlap():
    w = WorkerBase(None, None, "model", 8)
    both_running = asyncio.Event()
    got = []

    async def handler():
        await both_running.wait()
        got.append((await w.run_model(_where, alone=True))[0])

    for _ in range(2):
        await w.spawn(handler())
    both_running.set()
    await asyncio.gather(*w.tasks)
    assert len(got) == 2 and threading.get_ident() not in got and w.inline_calls == 0
    await w.stop()


async def test_compute_stays_on_the_model_thread_while_other_requests_are_live():
    w = WorkerBase(None, None, "model", 8)
    got = []

    async def handler():  # e.g. a verifier holding other sessions: their drafts may arrive any moment
        got.append((await w.run_model(_where, alone=False))[0])

    await w.spawn(handler())
    await asyncio.gather(*w.tasks)
    assert got != [threading.get_ident()] and w.inline_calls == 0
    await w.stop()


async def test_compute_stays_on_the_model_thread_when_inline_is_off():
    w = WorkerBase(None, None, "model", 8, inline_when_alone=False)
    got = []

    async def handler():
        got.append((await w.run_model(_where, alone=True))[0])

    await w.spawn(handler())
    await asyncio.gather(*w.tasks)
    assert got != [threading.get_ident()]
    await w.stop()


def test_the_link_timer_asks_for_less_after_a_late_sleep_and_more_after_an_early_one():
    """The correction rule, on made-up sleeps (how well it does on this machine's timers is
    `specstop bench pipeline`'s link error)."""
    timer = LinkTimer(gain=0.5, max_lead_ms=2.0)
    timer.correct(3, lead=0.0, spent=5.6, asked=5.0)
    assert timer.lead_ms[3] == 0.3
    timer.correct(3, lead=0.3, spent=4.8, asked=5.0)
    assert timer.lead_ms[3] == 0.2


def test_one_stalled_sleep_moves_the_lead_by_at_most_half_a_millisecond():
    timer = LinkTimer(gain=0.5, max_lead_ms=2.0)
    timer.correct(3, lead=0.0, spent=500.0, asked=5.0)
    assert timer.lead_ms[3] == 0.5


async def test_the_link_timer_sleeps_about_the_asked_delay():
    spent = [await LinkTimer().sleep(5.0) for _ in range(3)]
    assert all(s >= 5.0 - 2.0 for s in spent)  # asks for at most max_lead_ms less, never returns at once


async def test_a_new_delay_octave_starts_from_the_nearest_measured_lead():
    timer = LinkTimer()
    for _ in range(10):
        await timer.sleep(5.0)
    assert timer._nearest_lead(4) == timer.lead_ms[3]


async def test_the_link_timer_does_not_sleep_a_zero_delay():
    assert await LinkTimer().sleep(0.0) == 0.0


def test_uvloop_runs_the_workers_unless_asyncio_is_asked_for(monkeypatch):
    async def loop_type() -> str:
        return type(asyncio.get_running_loop()).__module__

    monkeypatch.delenv("SPECSTOP_LOOP", raising=False)
    assert aio.loop_name() == "uvloop" and aio.run(loop_type()).startswith("uvloop")
    monkeypatch.setenv("SPECSTOP_LOOP", "asyncio")
    assert aio.loop_name() == "asyncio" and aio.run(loop_type()).startswith("asyncio")


def test_the_bench_transport_floor_counts_only_the_transport(broker):
    from pipeline.bench.pipeline import bare_round_trip_with_compute_ms

    # responder busy 5 ms per request in its own process: that time is not transport
    floor = bare_round_trip_with_compute_ms(broker.url, draft_ms=2.0, verify_ms=50.0, n=20)
    assert 0.0 < floor < 50.0


async def test_async_tests_run_on_the_loop_the_workers_use():
    assert type(asyncio.get_running_loop()).__module__.startswith(aio.loop_name())


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
async def test_the_model_thread_runs_at_a_lower_priority_than_the_loop():
    w = WorkerBase(None, None, "model", 8, model_nice=5)
    loop_nice = _own_nice()
    got = []

    async def handler():
        got.append((await w.run_model(_own_nice, alone=False))[0])

    await w.spawn(handler())
    await asyncio.gather(*w.tasks)
    assert got == [min(19, loop_nice + 5)] and _own_nice() == loop_nice
    await w.stop()
