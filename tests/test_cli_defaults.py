"""A worker's defaults are said once, by its options dataclass: a worker started with no flags runs
exactly as one built in code with no arguments."""
from __future__ import annotations

import pytest

from nodes.protocol.admission import EdgeLimits
from nodes.protocol.verifier_table import TableConfig
from pipeline.cli import build_parser
from pipeline.orchestration.serve import CloudOptions, EdgeOptions

CLOUD = {"max_sessions": TableConfig.max_sessions, "session_ttl": TableConfig.session_ttl_s,
         "evict_idle": TableConfig.evict_idle_s, "max_context_tokens": CloudOptions.max_context_tokens,
         "max_batch": CloudOptions.max_batch, "batch_wait_ms": CloudOptions.batch_wait_ms,
         "slot_memory_mb": CloudOptions.slot_memory_mb}
EDGE = {"channel": EdgeOptions.channel, "policy": EdgeOptions.policy, "seed": EdgeOptions.seed,
        "request_timeout": EdgeOptions.request_timeout_s, "failover_deadline": EdgeOptions.failover_deadline_s,
        "max_active": EdgeLimits.max_active, "max_queued": EdgeLimits.max_queued,
        "max_prompt_tokens": EdgeLimits.max_prompt_tokens, "max_new_tokens_limit": EdgeLimits.max_new_tokens,
        "max_request_s": EdgeLimits.max_request_s, "draft_max_batch": EdgeOptions.draft_max_batch,
        "draft_batch_wait_ms": EdgeOptions.draft_batch_wait_ms,
        "draft_slot_memory_mb": EdgeOptions.draft_slot_memory_mb}


@pytest.mark.parametrize("command,expected", [("cloud", CLOUD), ("edge", EDGE)])
def test_a_worker_without_flags_gets_its_options_defaults(command, expected):
    args = vars(build_parser().parse_args([command]))
    assert {k: args[k] for k in expected} == expected
