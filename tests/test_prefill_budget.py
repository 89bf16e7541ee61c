"""The prefill chunk per device: the CPU default unmeasured, on a GPU the knee of the measured cost curve."""
from __future__ import annotations

from nodes.models.prefill import CPU_CHUNK, choose_chunk, measure_prefill

SIZES = (256, 512, 1024, 2048, 4096)


def test_cpu_keeps_the_cpu_chunk_without_measuring(pair):
    out = measure_prefill(pair.target)
    assert out["chunk"] == CPU_CHUNK == 256 and out["measured"] is False


def test_a_flat_then_rising_curve_gives_the_largest_size_within_budget():
    """The H200 7B curve (20.2 / 20.7 / 29.0 / 55.1 ms): 1024 tokens; timing stops past the limit."""
    curve = {256: 20.2, 512: 20.7, 1024: 29.0, 2048: 55.1, 4096: 110.0}
    timed = []
    chunk, ms, limit = choose_chunk(SIZES, lambda n: timed.append(n) or curve[n], 50.0)
    assert chunk == 1024 and limit == 50.0
    assert timed == [256, 512, 1024, 2048] and ms["2048"] == 55.1


def test_a_slow_device_still_gets_twice_its_smallest_chunks_cost():
    """Where even 256 tokens cost more than the budget, the chunk grows while a forward stays within twice
    that cost (linear cost: one doubling)."""
    chunk, _, limit = choose_chunk(SIZES, lambda n: n / 4, 50.0)
    assert limit == 128.0 and chunk == 512
