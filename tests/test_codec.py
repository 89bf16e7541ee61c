"""Wire codec: round trips, strict validation, and one error type for any garbage."""
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import Int32Array, Limits, SchemaError, decode, encode
from schemas.messages import DraftMsg, ErrorMsg, GenerateRequest, TimingEvent, TokenChunk, VerdictMsg
from schemas.rounds import Draft, SamplingParams

LIMITS = Limits(max_payload=64 * 1024, max_draft_length=16, vocab_size=258)


def sampled_draft():
    d = Draft([5, 6], seed=9, q_ids=[[5, 7], [6, 1]], q_probs=[[0.75, 0.25], [0.5, 0.5]])
    return DraftMsg.from_draft(d, request_id="r1", round=3, attempt=1, edge_id="edge-a",
                               params=SamplingParams(1.0, 0.9, 2), context=[1, 2, 3])


def test_draft_round_trips_with_its_sparse_q():
    msg = sampled_draft()
    back = decode(encode(msg), LIMITS)
    assert back == msg
    d = back.to_draft()
    assert d.q_ids == [[5, 7], [6, 1]] and d.q_probs == [[0.75, 0.25], [0.5, 0.5]] and d.seed == 9


def test_token_arrays_travel_as_bytes():
    raw = msgpack.unpackb(encode(sampled_draft()))
    assert isinstance(raw["tokens"], bytes) and isinstance(raw["q_probs"], bytes)


@pytest.mark.parametrize("msg", [
    GenerateRequest("r1", prompt="hello", max_new_tokens=8),
    VerdictMsg("r1", 0, 0, 2, 17, 3.5, 0.1, "cloud-1"),
    TokenChunk("r1", 0, Int32Array([104, 105]), "hi"),
    TimingEvent("e1", "r1", 0, 0, 4, 2, 30.0, 10.0, 12.0, 0.5, 7.5, 3.0, "auto", 2, "cloud-1", "1"),
    ErrorMsg("resend_context", "no session", "r1"),
])
def test_every_message_round_trips(msg):
    assert decode(encode(msg), LIMITS) == msg


@pytest.mark.parametrize("mutate, code, fragment", [
    (lambda b: b | {"v": 2}, "version", "schema version 2"),
    (lambda b: b | {"t": "nope"}, "bad_message", "unknown message type"),
    (lambda b: b | {"tokens": b"\x00\x01\x00"}, "bad_message", "4-byte items"),
    (lambda b: b | {"tokens": (300).to_bytes(4, "little")}, "bad_message", "outside the vocabulary"),
    (lambda b: b | {"tokens": bytes(4 * 17)}, "bad_message", "exceed the maximum draft length"),
    (lambda b: b | {"round": "3"}, "bad_message", "must be an int"),
    (lambda b: {k: v for k, v in b.items() if k != "seed"}, "bad_message", "missing field 'seed'"),
    (lambda b: b | {"extra": 1}, "bad_message", "unknown fields"),
    (lambda b: b | {"request_id": "a.b"}, "bad_message", "request_id"),
])
def test_invalid_drafts_are_refused_with_a_code(mutate, code, fragment):
    body = msgpack.unpackb(encode(sampled_draft()))
    with pytest.raises(SchemaError, match=fragment) as e:
        decode(msgpack.packb(mutate(body)), LIMITS)
    assert e.value.code == code


def test_oversized_payload_is_refused_before_decoding():
    with pytest.raises(SchemaError) as e:
        decode(b"\x00" * (LIMITS.max_payload + 1), LIMITS)
    assert e.value.code == "too_large"


def test_ext_types_are_refused():
    with pytest.raises(SchemaError, match="ext type"):
        decode(msgpack.packb(msgpack.ExtType(5, b"x")), LIMITS)


def test_a_message_of_the_wrong_kind_is_refused():
    with pytest.raises(SchemaError, match="expected a draft message"):
        decode(encode(ErrorMsg("x", "y")), LIMITS, expect=(DraftMsg,))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_schema_error(data):
    try:
        decode(data, LIMITS)
    except SchemaError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "t", "request_id", "round", "attempt", "edge_id", "tokens", "seed",
                                        "context", "top_k", "q_ids", "q_probs", "temperature"]),
                       st.one_of(st.integers(-2**40, 2**40), st.text(max_size=8), st.binary(max_size=16),
                                 st.floats(allow_nan=True), st.none(), st.booleans())))
def test_arbitrary_maps_raise_only_schema_error(body):
    try:
        decode(msgpack.packb(body), LIMITS)
    except SchemaError:
        pass


def test_float_arrays_reject_nan():
    body = msgpack.unpackb(encode(sampled_draft()))
    body["q_probs"] = b"\x00\x00\xc0\x7f" * 4  # float32 NaN
    with pytest.raises(SchemaError, match="non-finite"):
        decode(msgpack.packb(body), LIMITS)
