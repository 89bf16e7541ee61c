"""An edge admits a request only if its prompt and max_new_tokens fit the model's context."""
from __future__ import annotations

from nodes.protocol.admission import EdgeLimits, admit_generate, check_prompt_tokens
from schemas.messages import TOO_LONG, GenerateRequest

LIMITS = EdgeLimits(max_new_tokens=8192, max_context_tokens=4096)


def _request(max_new_tokens: int) -> GenerateRequest:
    return GenerateRequest(request_id="r1", prompt="hello", max_new_tokens=max_new_tokens)


def test_max_new_tokens_past_the_context_is_refused_before_tokenizing():
    refusal = admit_generate(_request(5000), LIMITS, live=0, draining=False, duplicate=False)
    assert refusal is not None and refusal.code == TOO_LONG
    assert "context of 4096 tokens" in refusal.message


def test_prompt_plus_new_tokens_past_the_context_is_refused():
    refusal = check_prompt_tokens(100, LIMITS, max_new_tokens=3997)
    assert refusal is not None and refusal.code == TOO_LONG


def test_prompt_plus_new_tokens_that_fill_the_context_exactly_is_admitted():
    assert check_prompt_tokens(100, LIMITS, max_new_tokens=3996) is None


def test_without_a_known_context_only_the_other_limits_apply():
    assert admit_generate(_request(2048), EdgeLimits(), live=0, draining=False, duplicate=False) is None
