"""The client's in-order assembly of a token stream: gaps, resyncs, duplicates (no broker)."""
from __future__ import annotations

import time

from pipeline.transport.client import StreamResult, _Stream
from schemas.codec import Int32Array
from schemas.messages import TokenChunk


def chunk(seq: int, ids, done: bool = False, full=None, resync: bool = False) -> TokenChunk:
    return TokenChunk("r", seq, Int32Array(ids), "".join(chr(97 + i % 26) for i in ids), done,
                      "length" if done else None, seq + 1, 0, None if full is None else Int32Array(full),
                      None if full is None else "".join(chr(97 + i % 26) for i in full), resync)


def stream() -> tuple[_Stream, StreamResult]:
    res = StreamResult("r")
    return _Stream(res, time.perf_counter()), res


def test_chunks_in_order_are_appended():
    s, res = stream()
    assert not s.add(chunk(0, [1, 2])) and s.add(chunk(1, [3], done=True, full=[1, 2, 3]))
    assert res.token_ids == [1, 2, 3] and res.text == "bcd" and res.missing_seqs == [] and res.late_tokens == 0


def test_a_gap_holds_later_chunks_back_and_asks_for_a_resync():
    s, res = stream()
    s.add(chunk(0, [1]))
    s.add(chunk(2, [3]))  # seq 1 was lost
    assert s.gap and res.token_ids == [1]


def test_a_resync_fills_the_gap_and_the_held_chunks_follow():
    s, res = stream()
    s.add(chunk(0, [1]))
    s.add(chunk(2, [3]))
    s.add(chunk(3, [4]))
    assert not s.add(chunk(1, [], full=[1, 2], resync=True))
    assert res.token_ids == [1, 2, 3, 4] and not s.gap and res.late_tokens == 1 and res.retracted_tokens == 0


def test_a_lost_last_chunk_is_recovered_by_its_resync():
    s, res = stream()
    s.add(chunk(0, [1]))
    assert s.add(chunk(1, [], done=True, full=[1, 2, 3], resync=True))
    assert res.token_ids == [1, 2, 3] and res.finish_reason == "length" and res.missing_seqs == [1]


def test_a_chunk_received_twice_is_ignored():
    s, res = stream()
    s.add(chunk(0, [1]))
    s.add(chunk(0, [1]))
    assert res.token_ids == [1] and res.duplicate_seqs == [0]


def test_a_chunk_already_covered_by_a_resync_is_ignored():
    s, res = stream()
    s.add(chunk(0, [1]))
    s.add(chunk(1, [], full=[1, 2], resync=True))
    s.add(chunk(1, [2]))
    assert res.token_ids == [1, 2] and res.duplicate_seqs == [1]


def test_an_older_resync_changes_nothing():
    s, res = stream()
    s.add(chunk(0, [1]))
    s.add(chunk(1, [2]))
    s.add(chunk(0, [], full=[1], resync=True))
    assert res.token_ids == [1, 2] and res.resyncs == 0


def test_a_resync_that_contradicts_what_was_streamed_is_counted():
    s, res = stream()
    s.add(chunk(0, [1, 2]))
    s.add(chunk(1, [], full=[1, 9, 3], resync=True))
    assert res.retracted_tokens == 1 and res.token_ids == [1, 9, 3]
