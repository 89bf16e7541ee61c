"""`specstop bench shapes`: the shape chooser's table, one row per delay, in-process (no models)."""
import json

import pytest

from pipeline.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["bench", "shapes", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_has_one_row_per_delay_with_the_pick_and_every_familys_best(capsys) -> None:
    rc, out, _ = run(capsys, "--json", "--delays", "0,50")
    res = json.loads(out)
    assert rc in (0, None) and [r["delay_ms"] for r in res["rows"]] == [0.0, 50.0]
    for row in res["rows"]:
        assert set(row["families"]) == {"chain", "tree", "chain-ahead", "tree-ahead", "stream-tree"}
        assert row["ms_per_token"] == row["families"][row["family"]]["ms_per_token"]


def test_on_the_bundled_pair_it_keeps_the_chain_at_zero_delay_and_streams_the_tree_at_fifty(capsys) -> None:
    rows = json.loads(run(capsys, "--json", "--delays", "0,50")[1])["rows"]
    assert rows[0]["family"] == "chain"
    assert rows[1]["family"] == "stream-tree"


def test_without_the_stream_tree_a_long_link_gets_a_tree_or_rounds_in_flight(capsys) -> None:
    rows = json.loads(run(capsys, "--json", "--delays", "50", "--stream-tree", "off")[1])["rows"]
    assert "stream-tree" not in rows[0]["families"]
    assert rows[0]["family"] in ("tree", "chain-ahead", "tree-ahead")


def test_the_text_form_is_a_header_and_one_line_per_delay(capsys) -> None:
    lines = run(capsys, "--delays", "0,5,50")[1].strip().splitlines()
    assert len(lines) == 2 + 3 and lines[2].split()[:2] == ["0", "L4"]


@pytest.mark.parametrize("argv, fragment", [
    (("--stream-tree", "3,x"), "is not 'C0,M'"),
    (("--stream-tree", "3,2"), "0 <= M (misses per token) <= 1"),
])
def test_a_bad_flag_is_one_line(capsys, argv, fragment) -> None:
    with pytest.raises(SystemExit) as exc:
        run(capsys, *argv)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(lines) == 1 and fragment in lines[0]


@pytest.mark.parametrize("argv, fragment", [
    (("--margin", "1.5"), "margin must lie in [0, 1)"),
    (("--table", "/nonexistent/trees.json"), "file not found"),
])
def test_a_bad_value_is_one_line(capsys, argv, fragment) -> None:
    rc, _, err = run(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and fragment in lines[0]


def test_simulate_shapes_reports_the_hindsight_best_the_pick_and_the_online_chooser_per_delay(capsys) -> None:
    rc = main(["simulate", "--shapes", "--json", "--delays", "0,50", "--seeds", "1", "--requests", "12",
               "--max-nodes", "8"])
    res = json.loads(capsys.readouterr().out)
    assert rc in (0, None) and [r["delay_ms"] for r in res["rows"]] == [0.0, 50.0]
    for row in res["rows"]:
        fixed = {f["shape"]: f["ms_per_token"] for f in row["fixed"]}
        assert row["best_in_hindsight"]["ms_per_token"] == min(fixed.values())
        assert sum(row["online"]["requests_per_family"].values()) == 12


def test_simulate_refuses_shapes_and_trees_together(capsys) -> None:
    assert main(["simulate", "--shapes", "--trees"]) == 2
    assert "give one" in capsys.readouterr().err
