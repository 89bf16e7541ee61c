"""Wire form of the stream tree (schemas/stream_tree.py, v4): round trips, bounds, versions, garbage."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.protocol.stream_tree import Limits, NodesMsg, VerdictMsg
from schemas.ahead import decode_ahead
from schemas.codec import Limits as CodecLimits
from schemas.codec import SchemaError, decode
from schemas.stream_tree import (STREAM_SCHEMA_VERSION, StreamNodes, StreamVerdict, decode_nodes, decode_verdict,
                                 encode_nodes, encode_verdict, stream_version)
from schemas.trees import decode_tree

VOCAB = 258
CODEC = CodecLimits(vocab_size=VOCAB)
LIMITS = Limits()


@st.composite
def groups(draw):
    """Groups as an edge makes them: ids only grow, children's tokens distinct, 1..max_width each."""
    next_id = draw(st.integers(1, 1000))
    out = []
    for _ in range(draw(st.integers(0, 6))):
        parent = next_id
        toks = draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=LIMITS.max_width, unique=True))
        kids = tuple((parent + 1 + i, t) for i, t in enumerate(toks))
        next_id = parent + 1 + len(toks)
        out.append((parent, kids))
    return tuple(out)


def _nodes(gs=(), context=(5, 6, 7), end=False, **kw) -> StreamNodes:
    root = (1, len(context) - 1 if context else 2, context[-1] if context else 7)
    base = dict(edge_id="edge-1", request_id="r-1", session="s1", seed=3, nodes=NodesMsg(root, tuple(gs)),
                context=tuple(context) if context else None, end=end)
    return StreamNodes(**(base | kw))


@settings(max_examples=200, deadline=None)
@given(groups(), st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40) | st.none(), st.booleans(),
       st.floats(0, 2), st.floats(0.01, 1))
def test_nodes_round_trip(gs, context, end, temperature, top_p):
    m = _nodes(gs, context or (), end, temperature=temperature, top_p=top_p)
    assert decode_nodes(encode_nodes(m), LIMITS, CODEC) == m


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(0, VOCAB - 1), max_size=LIMITS.max_verdict_tokens),
       st.integers(0, 1000), st.floats(0, 1e6))
def test_verdict_round_trip(start, tokens, misses, verify_ms):
    m = StreamVerdict("r-1", "s1", "cloud-1", VerdictMsg(start, tuple(tokens)), misses, 2 * misses, 3, 1, verify_ms)
    assert decode_verdict(encode_verdict(m), LIMITS, CODEC) == m


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_refused_with_a_schema_error(data):
    for dec in (decode_nodes, decode_verdict):
        try:
            dec(data, LIMITS, CODEC)
        except SchemaError as exc:
            assert "\n" not in str(exc)


def _raw(**changes) -> bytes:
    body = msgpack.unpackb(encode_nodes(_nodes([(1, ((2, 10), (3, 11)))])))
    body.update(changes)
    return msgpack.packb({k: v for k, v in body.items() if v is not None}, use_bin_type=True)


@pytest.mark.parametrize("changes,words", [
    ({"groups": [[1, [2, 10]]] * (LIMITS.max_groups_per_msg + 1)}, "at most 256 groups"),
    ({"groups": [[1, [x for c in range(2, 2 + LIMITS.max_width + 1) for x in (c, 8 + c)]]]}, "children, not 1..8"),
    ({"groups": [[1, []]]}, "children, not 1..8"),
    ({"groups": [[1, [2, 10, 3, 10]]]}, "repeated child tokens"),
    ({"groups": [[5, [4, 10]]]}, "not above its parent"),
    ({"groups": [[1, [2, VOCAB]]]}, "outside 0..257"),
    ({"groups": [[1, [2, "a"]]]}, "not an int"),
    ({"root": [1, 2]}, "'root' must be"),
    ({"root": [1, 2, VOCAB]}, "out of range"),
    ({"context": [5, 6, 8]}, "does not end at the root"),
    ({"context": [0] * (CODEC.max_context_tokens + 1)}, "at most 32768"),
    ({"edge_id": "a b"}, "'edge_id' is not a valid id"),
    ({"seed": -1}, "'seed'"),
    ({"temperature": float("nan")}, "finite"),
    ({"end": 1}, "'end' must be a bool"),
    ({"extra": 1}, "unknown fields"),
    ({"t": "stream_verdict"}, "expected a stream_nodes"),
])
def test_out_of_bounds_nodes_are_refused_naming_what(changes, words):
    with pytest.raises(SchemaError, match=words.replace("(", r"\(").replace(".", r"\.")):
        decode_nodes(_raw(**changes), LIMITS, CODEC)


def test_oversized_verdict_is_refused():
    body = msgpack.unpackb(encode_verdict(StreamVerdict("r", "s", "c", VerdictMsg(0, (1,)))))
    body["tokens"] = [1] * (LIMITS.max_verdict_tokens + 1)
    with pytest.raises(SchemaError, match="at most 512"):
        decode_verdict(msgpack.packb(body), LIMITS, CODEC)


@pytest.mark.parametrize("version", [1, 2, 3, 5, "4", None])
def test_another_version_is_a_version_error(version):
    with pytest.raises(SchemaError) as exc:
        decode_nodes(_raw(v=version), LIMITS, CODEC)
    assert exc.value.code == "version"


def test_older_peers_answer_version_to_a_stream_message():
    """A chain-only, tree or ahead peer refuses v4 as `version`, not as a malformed draft."""
    data = encode_nodes(_nodes([(1, ((2, 10),))]))
    assert stream_version(data, CODEC) == STREAM_SCHEMA_VERSION
    for old in (lambda d: decode(d, CODEC), lambda d: decode_tree(d, CODEC), lambda d: decode_ahead(d, CODEC)):
        with pytest.raises(SchemaError) as exc:
            old(data)
        assert exc.value.code == "version"


def test_stream_version_of_garbage_is_none():
    assert stream_version(b"\xc1", CODEC) is None
    assert stream_version(msgpack.packb([4]), CODEC) is None
