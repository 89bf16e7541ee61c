"""Micro-batching rules: a job waits at most the bounded wait for company, a full batch goes at
once, nothing waits when no other job can come, and a failed call reaches every job of its batch."""
from __future__ import annotations

import asyncio
import time

import pytest

from nodes.batcher import MicroBatcher


def recorder(calls: list, delay: float = 0.0):
    async def run(jobs: list[int]) -> list[int]:
        calls.append(list(jobs))
        if delay:
            await asyncio.sleep(delay)
        return [j * 10 for j in jobs]
    return run


async def test_jobs_arriving_within_the_wait_share_one_call_with_their_own_results():
    calls: list = []
    b = MicroBatcher(recorder(calls), max_batch=8, max_wait_s=0.05)
    t0 = time.perf_counter()
    got = await asyncio.gather(*(b.submit(i) for i in range(3)))
    waited = time.perf_counter() - t0
    assert calls == [[0, 1, 2]] and [g.result for g in got] == [0, 10, 20] and {g.size for g in got} == {3}
    assert 0.04 <= waited < 1.0  # the bounded wait, then dispatch
    b.close()


async def test_a_full_batch_goes_at_once_and_the_rest_form_the_next():
    calls: list = []
    b = MicroBatcher(recorder(calls), max_batch=4, max_wait_s=0.3)
    got = await asyncio.gather(*(b.submit(i) for i in range(6)))
    assert calls == [[0, 1, 2, 3], [4, 5]] and [g.size for g in got] == [4, 4, 4, 4, 2, 2]
    assert max(g.wait_ms for g in got[:4]) < 100 <= min(g.wait_ms for g in got[4:])  # full: no wait
    b.close()


async def test_nothing_waits_when_no_other_job_can_come():
    calls: list = []
    b = MicroBatcher(recorder(calls), max_batch=32, max_wait_s=5.0, more_coming=lambda: False)
    t0 = time.perf_counter()
    assert (await b.submit(7)).result == 70
    assert time.perf_counter() - t0 < 1.0 and b.sizes == {1: 1}
    b.close()


async def test_jobs_arriving_while_a_batch_computes_form_the_next_without_waiting_again():
    calls: list = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def run(jobs: list[int]) -> list[int]:
        calls.append(list(jobs))
        started.set()
        await release.wait()  # the first batch computes until the test ends its compute
        return [j * 10 for j in jobs]

    b = MicroBatcher(run, max_batch=32, max_wait_s=0.5)
    first = asyncio.create_task(b.submit(1))
    await asyncio.wait_for(started.wait(), 20)
    rest = [asyncio.create_task(b.submit(i)) for i in (2, 3)]
    # the compute outlasts the bounded wait (the duration is what is under test): the queued jobs'
    # wait is spent while it runs, so they must go the moment it ends
    await asyncio.sleep(0.6)
    t0 = time.perf_counter()
    release.set()
    got = await asyncio.wait_for(asyncio.gather(*rest), 20)
    await first
    assert calls == [[1], [2, 3]] and {r.size for r in got} == {2}
    assert time.perf_counter() - t0 < 0.4 and min(r.wait_ms for r in got) >= 500  # no second wait
    b.close()


async def test_a_failed_call_reaches_every_job_of_its_batch_and_the_next_batch_runs():
    async def run(jobs):
        if 0 in jobs:
            raise RuntimeError("boom")
        return jobs

    b = MicroBatcher(run, max_batch=8, max_wait_s=0.01)
    results = await asyncio.gather(b.submit(0), b.submit(1), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert (await b.submit(5)).result == 5
    b.close()


def test_bounds_are_checked():
    with pytest.raises(ValueError):
        MicroBatcher(recorder([]), max_batch=0)


async def test_an_unfinished_job_runs_again_in_the_next_batch_and_resolves_only_when_done():
    calls: list = []
    left = {7: 3}  # job 7 needs three calls (a long prompt prefilled a chunk per call)

    async def run(jobs: list[int]) -> list[tuple[int, bool]]:
        calls.append(list(jobs))
        await asyncio.sleep(0.02)
        out = []
        for j in jobs:
            left[j] = left.get(j, 1) - 1
            out.append((j, left[j] > 0))
        return out

    b = MicroBatcher(run, max_batch=8, max_wait_s=0.0, more_coming=lambda: False, again=lambda r: r[1])
    long_job = asyncio.ensure_future(b.submit(7))
    short = await asyncio.gather(b.submit(1), b.submit(2))  # answered from the first batch, 7 still unfinished
    assert [s.result for s in short] == [(1, False), (2, False)] and not long_job.done()
    done = await long_job
    assert done.result == (7, False) and sum(7 in c for c in calls) == 3
    assert all(c[0] == 7 for c in calls if 7 in c)  # the unfinished job goes first in its next batch
    b.close()


async def test_with_a_share_key_one_senders_backlog_takes_its_turn_and_another_gets_into_the_first_batch():
    calls: list = []
    b = MicroBatcher(recorder(calls), max_batch=4, max_wait_s=0.3, share_key=lambda j: j // 100)
    # sender 0 queued 8 jobs before sender 1's two arrived: FIFO would run 0..3, then 4..7, then sender 1
    got = await asyncio.gather(*(b.submit(j) for j in [0, 1, 2, 3, 4, 5, 6, 7, 100, 101]))
    assert calls[0] == [0, 1, 100, 101] and sorted(sum(calls, [])) == sorted([0, 1, 2, 3, 4, 5, 6, 7, 100, 101])
    assert [g.result for g in got] == [0, 10, 20, 30, 40, 50, 60, 70, 1000, 1010]
    b.close()
