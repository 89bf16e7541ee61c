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
         "slot_memory_mb": CloudOptions.slot_memory_mb, "max_ahead": CloudOptions.max_ahead}
EDGE = {"channel": EdgeOptions.channel, "policy": EdgeOptions.policy, "seed": EdgeOptions.seed,
        "request_timeout": EdgeOptions.request_timeout_s, "failover_deadline": EdgeOptions.failover_deadline_s,
        "max_active": EdgeLimits.max_active, "max_queued": EdgeLimits.max_queued,
        "max_prompt_tokens": EdgeLimits.max_prompt_tokens, "max_new_tokens_limit": EdgeLimits.max_new_tokens,
        "max_request_s": EdgeLimits.max_request_s, "draft_max_batch": EdgeOptions.draft_max_batch,
        "draft_batch_wait_ms": EdgeOptions.draft_batch_wait_ms,
        "draft_slot_memory_mb": EdgeOptions.draft_slot_memory_mb, "ahead": EdgeOptions.ahead}


@pytest.mark.parametrize("command,expected", [("cloud", CLOUD), ("edge", EDGE)])
def test_a_worker_without_flags_gets_its_options_defaults(command, expected):
    args = vars(build_parser().parse_args([command]))
    assert {k: args[k] for k in expected} == expected


def test_the_gateway_without_flags_gets_its_configs_defaults():
    from pipeline.http.config import GatewayConfig, GatewayOptions

    c, o = GatewayConfig(), GatewayOptions("", "")
    args = vars(build_parser().parse_args(["gateway"]))
    assert {k: args[k] for k in ("model_name", "max_in_flight", "max_tokens_limit", "max_prompt_tokens",
                                 "default_chat_tokens", "max_length", "max_connections", "id", "drain_timeout")} == {
        "model_name": c.model_name, "max_in_flight": c.max_in_flight, "max_tokens_limit": c.max_tokens_limit,
        "max_prompt_tokens": c.max_prompt_tokens, "default_chat_tokens": c.default_chat_tokens,
        "max_length": c.max_length, "max_connections": c.max_connections, "id": o.node_id,
        "drain_timeout": o.drain_timeout_s}
    assert (args["request_timeout"], args["silence_timeout"], args["header_timeout"], args["body_timeout"]) == (
        c.request_timeout_s, c.silence_timeout_s, c.header_timeout_s, c.body_timeout_s)


def test_the_controller_without_flags_gets_its_stream_and_learner_defaults():
    from nodes.config import MAX_LEARNERS, MAX_LENGTH
    from pipeline.transport.jetstream import StreamLimits

    s = StreamLimits()
    args = vars(build_parser().parse_args(["control"]))
    assert (args["max_learners"], args["max_length"], args["stream_max_msgs"], args["stream_max_bytes"],
            args["stream_max_age"]) == (MAX_LEARNERS, MAX_LENGTH, s.max_msgs, s.max_bytes, s.max_age_s)


def test_the_command_line_options_pass_on_the_workers_own_defaults():
    from nodes.config import CloudConfig, EdgeConfig

    cloud, edge = CloudConfig(), EdgeConfig()
    c, e = CloudOptions(), EdgeOptions()
    shared = ("max_sessions", "session_ttl_s", "evict_idle_s", "max_batch", "batch_wait_ms", "slot_cache",
              "slot_memory_mb", "max_sessions_per_edge", "max_rounds_per_edge", "batch_invariant", "max_ahead")
    assert {k: getattr(c, k) for k in shared} == {k: getattr(cloud, k) for k in shared}
    assert (e.policy, e.seed, e.request_timeout_s, e.failover_deadline_s, e.place_sessions, e.ahead) == (
        edge.default_policy, edge.seed, edge.request_timeout_s, edge.failover_deadline_s, edge.place_sessions,
        edge.ahead)
    d = edge.drafting
    assert (e.draft_max_batch, e.draft_batch_wait_ms, e.draft_slot_cache, e.draft_slot_memory_mb) == (
        d.max_batch, d.wait_ms, d.slot_cache, d.memory_mb)


def test_the_gateways_default_bounds_are_its_edges_bounds():
    from pipeline.http.config import GatewayConfig

    gateway, edge = GatewayConfig(), EdgeLimits()
    assert (gateway.max_prompt_tokens, gateway.max_tokens_limit) == (edge.max_prompt_tokens, edge.max_new_tokens)


def test_demo_passes_rounds_in_flight_on_to_the_edge_it_starts_and_nothing_by_default():
    from pipeline.cli.runs import _tree_flags

    parse = build_parser().parse_args
    assert _tree_flags(parse(["demo"]), "edge") == []
    assert _tree_flags(parse(["demo", "--ahead", "3"]), "edge") == ["--ahead", "3"]
    assert _tree_flags(parse(["demo", "--ahead", "2", "--tree", "3x3"]), "edge") == ["--tree", "3x3", "--ahead", "2"]
    assert _tree_flags(parse(["demo", "--ahead", "3"]), "cloud") == []
