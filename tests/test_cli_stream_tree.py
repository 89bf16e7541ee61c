"""`edge --stream-tree` refuses, in one line and before any model loads, what it cannot combine with;
`bench trees --live` refuses stream rows that could not run before running any row."""
from __future__ import annotations

import argparse

import pytest

from nodes.config import StreamShape
from pipeline.bench.trees_live import _edge_flags, _node_flags, row_specs
from pipeline.cli import build_parser
from pipeline.cli.bench import check_stream_rows
from pipeline.cli.workers import check_stream_tree
from pipeline.errors import PipelineError
from pipeline.orchestration.serve import EdgeOptions


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**({"stream_tree": True, "stream_width": 2, "stream_batch": 16, "tree": "off",
                                  "ahead": 1} | kw))


def test_plain_stream_tree_is_accepted():
    check_stream_tree(_args())


@pytest.mark.parametrize("kw,words", [
    ({"tree": "3x2"}, "drop --tree and --ahead"),
    ({"ahead": 3}, "drop --tree and --ahead"),
    ({"stream_width": 9}, "must be 1..8"),
    ({"stream_width": 0}, "must be 1..8"),
    ({"stream_tree": False, "stream_width": 3}, "add --stream-tree"),
    ({"stream_batch": 0}, "--stream-batch must be 1..256"),
    ({"stream_batch": 257}, "--stream-batch must be 1..256"),
    ({"stream_tree": False, "stream_batch": 32}, "nodes per draft forward: add --stream-tree"),
])
def test_combinations_that_cannot_run_are_refused(kw, words):
    with pytest.raises(PipelineError, match=words.replace(".", r"\.")) as exc:
        check_stream_tree(_args(**kw))
    assert "\n" not in str(exc.value)


def test_the_batch_reaches_the_edges_stream_shape():
    a = build_parser().parse_args(["edge", "--stream-tree", "--stream-batch", "32"])
    check_stream_tree(a)
    assert a.stream_batch == 32 and EdgeOptions().stream_batch == StreamShape().batch == 16


def test_width_auto_parses_and_needs_the_stream_tree(capsys):
    a = build_parser().parse_args(["edge", "--stream-tree", "--stream-width", "auto"])
    check_stream_tree(a)
    assert a.stream_width == "auto"
    with pytest.raises(PipelineError, match="add --stream-tree"):
        check_stream_tree(build_parser().parse_args(["edge", "--stream-width", "auto"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edge", "--stream-tree", "--stream-width", "wide"])
    assert "expected a width (1..8) or 'auto', got 'wide'" in capsys.readouterr().err


@pytest.mark.parametrize("argv,words", [
    (["--stream", "3,9"], "stream width must be 1..8"),
    (["--stream-auto", "9"], "stream width must be 1..8"),
    (["--stream-fill", "9"], "stream width must be 1..8"),
    (["--stream-batch", "32"], "add --stream, --stream-auto, --stream-fill or --stream-width-auto"),
    (["--stream", "3", "--stream-batch", "0"], "--stream-batch must be 1..256"),
])
def test_bench_trees_refuses_stream_rows_that_cannot_run_before_any_row(argv, words):
    a = build_parser().parse_args(["bench", "trees", "--live", *argv])
    with pytest.raises(PipelineError, match=words.replace(".", r"\.")) as exc:
        check_stream_rows(a)
    assert "\n" not in str(exc.value)


def test_a_bench_stream_row_with_a_batch_asks_the_edge_for_it():
    rows = row_specs(trees=False, stream=(3,), stream_auto=(4,), stream_batch=32)
    assert [(label, tree) for label, _, tree, _ in rows][-2:] == [("stream tree w3 b32", "stream:3:b32"),
                                                                   ("stream tree auto w4 b32", "stream:4:b32:auto")]
    assert _edge_flags("stream:3:b32", 1) == ["--stream-tree", "on", "--stream-width", "3", "--stream-batch=32"]
    assert _edge_flags("stream:4:b32:auto", 1)[:2] == ["--stream-tree", "auto"]
    assert _edge_flags("stream:2", 1) == ["--stream-tree", "on", "--stream-width", "2"]  # no batch: the default


def test_a_bench_fill_row_asks_the_cloud_to_fill_and_the_edge_for_the_same_stream_tree():
    rows = row_specs(trees=False, stream=(3,), stream_fill=(3,))
    assert [(label, tree) for label, _, tree, _ in rows][-2:] == [("stream tree w3", "stream:3"),
                                                                   ("stream tree w3 fill", "stream:3:fill")]
    assert _node_flags("stream:3:fill", 1) == {"edge": ["--stream-tree", "on", "--stream-width", "3"],
                                               "cloud": ["--stream-fill"]}
    assert "cloud" not in _node_flags("stream:3", 1)  # speculation rows: the cloud's default, no fill


def test_the_learned_width_row_asks_the_edge_for_width_auto():
    specs = row_specs(trees=False, stream_width_auto=True)
    label, _, tree, _ = specs[-1]
    assert label == "stream tree w-auto" and _edge_flags(tree, 1) == ["--stream-tree", "on", "--stream-width", "auto"]


def test_bench_trees_refuses_the_learned_width_row_without_live():
    a = build_parser().parse_args(["bench", "trees", "--stream-width-auto"])
    with pytest.raises(PipelineError, match="need --live"):
        a.func(a)
