"""`edge --stream-tree` refuses, in one line and before any model loads, what it cannot combine with."""
from __future__ import annotations

import argparse

import pytest

from pipeline.cli.workers import check_stream_tree
from pipeline.errors import PipelineError


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**({"stream_tree": True, "stream_width": 2, "tree": "off", "ahead": 1} | kw))


def test_plain_stream_tree_is_accepted():
    check_stream_tree(_args())


@pytest.mark.parametrize("kw,words", [
    ({"tree": "3x2"}, "drop --tree and --ahead"),
    ({"ahead": 3}, "drop --tree and --ahead"),
    ({"stream_width": 5}, "must be 1..4"),
    ({"stream_width": 0}, "must be 1..4"),
    ({"stream_tree": False, "stream_width": 3}, "add --stream-tree"),
])
def test_combinations_that_cannot_run_are_refused(kw, words):
    with pytest.raises(PipelineError, match=words.replace(".", r"\.")) as exc:
        check_stream_tree(_args(**kw))
    assert "\n" not in str(exc.value)
