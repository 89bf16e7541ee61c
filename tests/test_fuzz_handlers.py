"""Property-based fuzzing through the handlers' logic (not only the codec), one subject each.

Every subject's handler is decode + a protocol object; hostile payloads may
only ever end as a SchemaError / ControlError (answered) or as valid work
within the bounds. The same handlers are fuzzed over a real broker in
tests/test_faults.py (10,000 messages per subject).
"""
from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control import ControlError, RoundContext, make_policy
from nodes.policy_book import PolicyBook
from nodes.protocol.admission import EdgeLimits, admit_generate
from nodes.protocol.timing import outcome_of
from nodes.protocol.verifier_table import Outcome, SessionTable, TableConfig
from pipeline.chaos.fuzz import mutant, targets
from schemas.codec import Limits, SchemaError, decode
from schemas.messages import CancelMsg, DraftMsg, GenerateRequest, PolicyUpdate, ResumeMsg, TimingEvent

pytestmark = pytest.mark.slow  # hypothesis runs hundreds of examples per handler (~12 s)

LIMITS = Limits(max_draft_length=8, vocab_size=258)
TARGETS = {t.name: t for t in targets("edge-1", "cloud-1")}
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=12)
    | st.binary(max_size=24),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


def payloads(target_name: str):
    """Mutants of the subject's valid message (seeded by hypothesis), or any msgpack value at all."""
    template = TARGETS[target_name].template
    mutated = st.integers(0, 2**32).map(lambda seed: mutant(template, random.Random(seed)))
    anything = msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True))
    with_type = st.dictionaries(st.sampled_from(["v", "t", "request_id", "edge_id", "tokens", "round", "policy",
                                                 "snapshot", "version", "inbox", "prompt"]), msgpack_values,
                                max_size=8).map(lambda d: msgpack.packb({"v": 1, **d}, use_bin_type=True))
    return st.one_of(mutated, anything, with_type)


def decoded(payload: bytes, kind):
    try:
        return decode(payload, LIMITS, expect=(kind,))
    except SchemaError as exc:
        assert exc.code and str(exc) and "\n" not in str(exc)
        return None


def test_a_type_field_that_is_not_a_string_is_a_schema_error_not_a_type_error():
    for t in ([1, 2], {"a": 1}, 3.5, None):
        try:
            decode(msgpack.packb({"v": 1, "t": t}), LIMITS)
        except SchemaError as exc:
            assert exc.code == "bad_message"
        else:
            raise AssertionError("decoded")


@SETTINGS
@given(st.lists(payloads("draft"), min_size=1, max_size=12))
def test_verify_handler_answers_each_draft_at_most_once_now_and_keeps_its_cap(batch):
    table = SessionTable(TableConfig("cloud-1", max_sessions=3, evict_idle_s=1.0))
    for i, payload in enumerate(batch):
        msg = decoded(payload, DraftMsg)
        if msg is None:
            continue
        adm = table.admit(msg, f"reply-{i}", float(i))
        assert len(adm.replies) <= 1 and len(table.sessions) <= 3
        assert (adm.compute is None) or not adm.replies  # computed rounds are answered when they finish
        if adm.compute is not None and i % 2:
            result = RuntimeError("model failed") if i % 3 == 0 else Outcome(0, 1, 1.0, 0.0)
            assert len(table.finish(adm.compute.session, result, None, float(i))) == 1


@SETTINGS
@given(payloads("generate"))
def test_generate_handler_refuses_or_admits_within_the_bounds(payload):
    req = decoded(payload, GenerateRequest)
    if req is None:
        return
    limits = EdgeLimits(max_prompt_tokens=64, max_new_tokens=100)
    refusal = admit_generate(req, limits, live=0, draining=False, duplicate=False)
    if refusal is None:
        assert req.max_new_tokens <= 100 and len(req.prompt) <= limits.max_prompt_chars
        try:
            PolicyBook(8, 0).canonical(req.policy or "auto")
        except ControlError:
            pass


@SETTINGS
@given(payloads("policy"))
def test_policy_handler_applies_only_updates_a_policy_can_act_on(payload):
    upd = decoded(payload, PolicyUpdate)
    if upd is None:
        return
    book = PolicyBook(8, 0, learn_locally=False)
    try:
        book.apply_update(upd.policy, upd.version, upd.snapshot)
    except ControlError:
        assert book.versions.get(upd.policy, 0) == 0
        return
    policy, version = book.acting(book.canonical(upd.policy))
    assert version == upd.version
    for delay in (0.0, 50.0, 500.0):
        assert 0 <= policy.choose(RoundContext(delay, "0")) <= 8


@SETTINGS
@given(payloads("timing"))
def test_timing_handler_feeds_a_learner_that_still_chooses_within_bounds(payload):
    ev = decoded(payload, TimingEvent)
    if ev is None:
        return
    try:
        learner = make_policy(ev.policy, max_length=8)
    except ControlError:
        return
    learner.observe(outcome_of(ev))
    assert 0 <= learner.choose(RoundContext(ev.network_ms / 2, ev.channel_state)) <= 8


@SETTINGS
@given(payloads("cancel"), payloads("resume"))
def test_cancel_and_resume_handlers_decode_or_refuse(cancel, resume):
    for payload, kind in ((cancel, CancelMsg), (resume, ResumeMsg)):
        msg = decoded(payload, kind)
        if msg is not None:
            assert msg.inbox and len(msg.inbox) <= 256


STATE_FIELDS = ["accepted", "at_risk", "arm_n", "arm_sum", "seed", "n_obs", "n_chosen", "states", "transitions",
                "prev_state", "sum_t", "sum_a", "sum_r", "n", "range", "length", "0"]
state_values = msgpack_values | st.lists(st.floats() | st.integers(-5, 10**6), min_size=8, max_size=8) | st.dictionaries(
    st.text(max_size=4), st.dictionaries(st.sampled_from(["n", "delay_sum", "compute_sum", "predicted_sum", "0"]),
                                         st.floats() | st.integers(-5, 100), max_size=4), max_size=3)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["auto", "ucb-specstop", "ucb-specstop-ctx", "naive-ucb", "hf-heuristic"]),
       st.dictionaries(st.sampled_from(STATE_FIELDS) | st.text(max_size=6), state_values, max_size=6), st.booleans())
def test_any_snapshot_state_is_refused_cleanly_or_restores_a_policy_that_can_choose(spec, junk, start_valid):
    policy = make_policy(spec, max_length=8)
    state = dict(policy.snapshot()["state"], **junk) if start_valid else junk
    snap = {"format": 1, "spec": policy.spec, "max_length": 8, "state": state}
    try:
        policy.restore(msgpack.unpackb(msgpack.packb(snap), raw=False, strict_map_key=False))
    except ControlError as exc:
        assert str(exc).startswith("snapshot")
        return
    for delay in (0.0, 50.0):
        assert 1 <= policy.choose(RoundContext(delay, "0")) <= 8
