"""`python -m pipeline.bench.stream_widths`: widths side by side on the same prompts, the same tokens
at every width, and arguments refused in one line before any model loads."""
from __future__ import annotations

import pytest

from pipeline.bench.stream_widths import bench_stream_widths, main


def test_every_width_gives_the_same_tokens_and_a_row_with_its_misses():
    res = bench_stream_widths(widths=(1, 8), delays_ms=(0.0,), repeats=1, max_new_tokens=8)
    assert res["refused"] == []  # greedy output does not depend on the width
    rows = res["delay_0ms"]["rows"]
    assert set(rows) == {"w1", "w8"} and res["delay_0ms"]["best"] in rows
    assert all(len(r["runs"]) == 3 for r in rows.values())  # the proactive bench's 3 prompts, once each
    assert rows["w8"]["misses_per_token"] <= rows["w1"]["misses_per_token"]  # more children, never more misses


@pytest.mark.parametrize("argv,words", [(["--widths", "9"], "widths must be 1..8"),
                                        (["--widths", "2,x"], "expected widths"),
                                        (["--delays", "-1"], "delays must be 0..10000 ms"),
                                        (["--repeats", "0"], "invalid choice")])
def test_bad_arguments_are_refused_in_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1]
