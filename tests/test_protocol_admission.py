"""What an edge admits: bounds checked before any work, one clear refusal each."""
from __future__ import annotations

import pytest

from nodes.protocol.admission import EarlyCancels, EdgeLimits, admit_generate, check_prompt_tokens, deadline_s
from schemas.codec import Int32Array
from schemas.messages import GenerateRequest

LIMITS = EdgeLimits(max_active=2, max_queued=1, max_prompt_tokens=10, max_new_tokens=20, max_request_s=60.0)


def req(**kw) -> GenerateRequest:
    return GenerateRequest("r1", **({"prompt": "hello", "max_new_tokens": 8} | kw))


def test_a_request_within_every_bound_is_admitted():
    assert admit_generate(req(), LIMITS, live=0, draining=False, duplicate=False) is None


def test_a_full_edge_answers_overloaded_at_once():
    r = admit_generate(req(), LIMITS, live=3, draining=False, duplicate=False)
    assert r.code == "overloaded" and "2 active + 1 queued" in r.message


def test_a_request_id_already_live_on_this_edge_is_refused():
    assert admit_generate(req(), LIMITS, 0, False, duplicate=True).code == "duplicate"


def test_a_draining_edge_takes_no_new_request():
    assert admit_generate(req(), LIMITS, 0, draining=True, duplicate=False).code == "unavailable"


def test_max_new_tokens_above_the_edge_limit_is_refused_naming_both():
    r = admit_generate(req(max_new_tokens=21), LIMITS, 0, False, False)
    assert r.code == "too_long" and "21" in r.message and "20" in r.message


def test_a_prompt_string_too_long_to_fit_is_refused_before_tokenizing():
    r = admit_generate(req(prompt="x" * (16 * 10 + 1)), LIMITS, 0, False, False)
    assert r.code == "too_long" and "characters" in r.message


def test_prompt_ids_over_the_limit_are_refused():
    assert admit_generate(req(prompt="", prompt_ids=Int32Array(range(11))), LIMITS, 0, False, False).code == "too_long"


@pytest.mark.parametrize("n, code", [(0, "bad_message"), (11, "too_long"), (10, None)])
def test_the_tokenized_prompt_is_checked_against_the_limit(n, code):
    r = check_prompt_tokens(n, LIMITS)
    assert (r.code if r else None) == code


def test_a_requests_own_deadline_is_capped_by_the_edges():
    assert deadline_s(req(deadline_s=5.0), LIMITS) == 5.0
    assert deadline_s(req(deadline_s=500.0), LIMITS) == 60.0 and deadline_s(req(), LIMITS) == 60.0


def test_a_cancel_that_came_first_refuses_its_request_once():
    early = EarlyCancels(keep_s=30.0)
    early.add("r1", "_INBOX.a", now=0.0)
    assert early.take("r1", "_INBOX.a", now=1.0) and not early.take("r1", "_INBOX.a", now=1.5)


def test_an_early_cancel_stops_only_the_request_sent_with_its_inbox():
    early = EarlyCancels()
    early.add("r1", "_INBOX.a", now=0.0)
    assert not early.take("r1", "_INBOX.other", now=1.0) and not early.take("r1", None, now=1.0)
    assert early.take("r1", "_INBOX.a", now=1.0)


def test_early_cancels_expire_and_stay_bounded():
    early = EarlyCancels(keep_s=10.0, max_kept=3)
    early.add("old", "i", now=0.0)
    assert not early.take("old", "i", now=10.5)
    for k in range(10):
        early.add(f"r{k}", "i", now=20.0)
    assert len(early) == 3 and early.take("r9", "i", now=20.0) and not early.take("r0", "i", now=20.0)
