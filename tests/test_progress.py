"""Off a terminal, progress is one plain line per period on its stream, never one per step."""
from __future__ import annotations

import io

from pipeline.progress import PlainProgress, every_s


def test_a_plain_line_at_most_once_per_period():
    now = [0.0]
    out = io.StringIO()
    p = PlainProgress("requests", 10, stream=out, every=5.0, clock=lambda: now[0])
    for t in (1.0, 2.0, 5.5, 6.0, 11.0):
        now[0] = t
        p.advance()
    assert out.getvalue().splitlines() == ["requests: 3/10 (30%)", "requests: 5/10 (50%)"]


def test_a_run_shorter_than_the_period_prints_nothing():
    out = io.StringIO()
    p = PlainProgress("rounds", None, stream=out, every=5.0, clock=lambda: 1.0)
    p.advance()
    assert out.getvalue() == ""


def test_the_period_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SPECSTOP_PROGRESS_EVERY_S", "0.5")
    assert every_s() == 0.5
    monkeypatch.setenv("SPECSTOP_PROGRESS_EVERY_S", "often")
    assert every_s() == 5.0
