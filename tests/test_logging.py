"""Logs: every event as JSON in the file (analysis reads it), a readable console filtered by level, and
events named for what happened (a stop sequence is a finish, a clean close is not a disconnection)."""
from __future__ import annotations

import asyncio
import io
import json

import pytest

from pipeline import logs
from pipeline.transport import bus
from pipeline.transport.broker import ServerLogRelay
from pipeline.transport.client import StopSignal, generate_stream
from schemas.messages import GenerateRequest
from tests.conftest import run_cli
from tests.pipeline_fixtures import cluster, read_log, wait_for

PROMPT = "The try statement specifies exception handlers"


def emit_one_of_each(log) -> None:
    log.debug("round", request_id="r1", round=0, draft_length=3)
    log.info("request_done", request_id="r1", tokens=12)
    log.warning("request_failed", request_id="r2", code="deadline", error="too slow")
    log.error("internal_error", error="boom")


def test_the_log_file_keeps_every_event_as_one_json_object_whatever_the_console_level(tmp_path):
    console = io.StringIO()
    emit_one_of_each(logs.configure("edge-1", tmp_path / "edge-1.jsonl", level="error", fmt="console",
                                    stream=console))
    events = [json.loads(line) for line in (tmp_path / "edge-1.jsonl").read_text().splitlines()]
    assert [(e["event"], e["level"]) for e in events] == [
        ("round", "debug"), ("request_done", "info"), ("request_failed", "warning"), ("internal_error", "error")]
    assert all({"node", "event", "level", "ts"} <= e.keys() and e["node"] == "edge-1" for e in events)
    assert events[0]["draft_length"] == 3 and events[2]["code"] == "deadline"


def test_the_console_shows_only_events_at_its_level_or_above():
    console = io.StringIO()
    emit_one_of_each(logs.configure("edge-1", level="info", fmt="json", stream=console))
    assert [json.loads(line)["event"] for line in console.getvalue().splitlines()] == [
        "request_done", "request_failed", "internal_error"]


def test_per_round_events_show_on_the_console_at_debug():
    console = io.StringIO()
    emit_one_of_each(logs.configure("edge-1", level="debug", fmt="json", stream=console))
    assert json.loads(console.getvalue().splitlines()[0])["event"] == "round"


def test_the_console_format_is_one_readable_line_per_event_not_json():
    console = io.StringIO()
    logs.configure("edge-1", level="info", fmt="console", stream=console).info("request_done", request_id="r1",
                                                                               tokens=12)
    [line] = console.getvalue().splitlines()
    assert "request_done" in line and "[edge-1]" in line and "request_id=r1" in line and "tokens=12" in line
    assert not line.startswith("{") and "\x1b[" not in line  # no colours off a terminal


def test_auto_writes_json_lines_off_a_terminal():
    console = io.StringIO()
    logs.configure("edge-1", level="info", fmt="auto", stream=console).info("request_done", tokens=1)
    assert json.loads(console.getvalue())["event"] == "request_done"


def test_auto_beside_a_log_file_keeps_a_console_that_is_not_a_terminal_quiet(tmp_path):
    console = io.StringIO()
    emit_one_of_each(logs.configure("edge-1", tmp_path / "e.jsonl", level="debug", fmt="auto", stream=console))
    assert console.getvalue() == "" and len((tmp_path / "e.jsonl").read_text().splitlines()) == 4


def test_the_process_console_settings_apply_to_loggers_configured_after_them():
    console = io.StringIO()
    logs.set_console("warning", "json")
    try:
        emit_one_of_each(logs.configure("edge-1", stream=console))
    finally:
        logs.set_console()
    assert [json.loads(line)["level"] for line in console.getvalue().splitlines()] == ["warning", "error"]


def test_an_unknown_level_or_format_is_a_clear_error():
    with pytest.raises(ValueError, match="log level 'verbose' is not one of debug, info, warning, error"):
        logs.configure("edge-1", level="verbose")
    with pytest.raises(ValueError, match="log format 'xml'"):
        logs.configure("edge-1", fmt="xml")


def test_the_cli_refuses_an_unknown_log_level_in_one_line():
    r = run_cli("edge", "--log-level", "verbose", timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--log-level" in r.stderr


def test_nats_server_lines_are_relayed_as_events_with_warnings_and_errors_above_debug(tmp_path):
    server_log = tmp_path / "nats-server.log"
    server_log.write_text("[7] 2026/12/04 20:55:01.997419 [INF] Starting nats-server\n"
                          "[7] 2026/12/04 20:55:02.000000 [WRN] Slow consumer detected\n"
                          "[7] 2026/12/04 20:55:03.000000 [ERR] Error listening on port: address in use\n"
                          "[7] 2026/12/04 20:55:03.000000 [INF] half a li")  # not yet a whole line
    out = tmp_path / "broker.jsonl"
    relay = ServerLogRelay(server_log, logs.configure("broker", out, fmt="json"))
    assert relay.poll() == 3
    with server_log.open("a") as f:
        f.write("ne\n")
    assert relay.poll() == 1
    events = read_log(out)
    assert [(e["event"], e["level"], e["server_level"]) for e in events] == [
        ("nats_server", "debug", "INF"), ("nats_server", "warning", "WRN"), ("nats_server", "error", "ERR"),
        ("nats_server", "debug", "INF")]
    assert events[1]["message"] == "Slow consumer detected" and events[3]["message"] == "half a line"


def test_the_run_summary_names_a_failure_code_once():
    from pipeline.orchestration.local import workload_failure

    line = workload_failure({"requests": 2, "failed": 2, "error_codes": {"no_verifier": 2},
                             "errors": ["no_verifier: no verifier answered round 0 of r1 within 30 s"]})
    assert line.startswith("2 of 2 requests failed (no_verifier: no verifier answered round 0 of r1 within 30 s);")


async def test_closing_a_connection_is_logged_as_closed_not_as_a_disconnection(broker, tmp_path):
    nc = await bus.connect(broker.url, "w", logs.configure("w", tmp_path / "w.jsonl"))
    await nc.close()
    await wait_for(lambda: read_log(tmp_path / "w.jsonl"))
    assert [(e["event"], e["level"]) for e in read_log(tmp_path / "w.jsonl")] == [("nats_closed", "info")]


async def test_a_stop_sequence_ends_the_request_on_the_edge_as_finished_not_failed(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, channel="const:10") as (client, edge, clouds):
        stop = StopSignal()
        req = GenerateRequest("stopped", prompt=PROMPT, max_new_tokens=1500, policy="fixed:2")
        task = asyncio.create_task(generate_stream(client, req, 30, stop=stop))
        await wait_for(lambda: clouds[0].sessions and "stopped" in edge.live)
        stop.stop("stop")
        res = await asyncio.wait_for(task, 20)
        await wait_for(lambda: not edge.live)
    assert res.error_code == "stop"
    events = [e for e in read_log(tmp_path / "edge-1.jsonl") if e.get("request_id") == "stopped"]
    ends = [(e["event"], e["level"], e.get("reason")) for e in events if e["event"].startswith("request_")]
    assert ends == [("request_finished", "info", "stop")]
    assert not [e for e in events if e["level"] in ("warning", "error")]
    closes = [e["event"] for e in read_log(tmp_path / "edge-1.jsonl") if e["event"].startswith("nats_")]
    assert closes == ["nats_closed"]  # the cluster's clean shutdown


async def test_a_stop_sequence_met_behind_the_http_gateway_is_a_finished_request_on_the_edge(broker, pair, tmp_path):
    from nodes.speculative import target_only_generate
    from tests.test_http_api import gateway

    ref = target_only_generate(pair, pair.tokenizer.encode(PROMPT, add_special_tokens=False), 48).text
    stop = ref[len(ref) // 2:len(ref) // 2 + 6]
    async with cluster(broker.url, pair, tmp_path, channel="const:10") as (_, edge, clouds), \
            gateway(broker.url, pair, tmp_path) as (client, raw, gw):
        out = await client.completions.create(model="specstop", prompt=PROMPT, max_tokens=1500, temperature=0,
                                              stop=[stop], extra_body={"specstop": {"policy": "fixed:2"}})
        await wait_for(lambda: not edge.live)
    assert out.choices[0].finish_reason == "stop" and stop not in out.choices[0].text
    ends = [(e["event"], e["level"], e.get("reason")) for e in read_log(tmp_path / "edge-1.jsonl")
            if e["event"].startswith("request_")]
    assert ends == [("request_finished", "info", "stop")]


async def test_a_cancel_that_overtakes_its_request_is_logged_once_as_cancelled_without_a_warning(broker, pair,
                                                                                                   tmp_path):
    from schemas import subjects
    from schemas.codec import decode, encode
    from schemas.messages import CancelMsg, ErrorMsg

    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        inbox = client.new_inbox()
        sub = await client.subscribe(inbox)
        await client.request(subjects.CANCEL, encode(CancelMsg("early", inbox)), timeout=5)
        await client.publish(subjects.GENERATE, encode(GenerateRequest("early", prompt=PROMPT, max_new_tokens=50)),
                             reply=inbox)
        end = decode((await sub.next_msg(timeout=20)).data)
    assert isinstance(end, ErrorMsg) and end.code == "cancelled"
    events = [e for e in read_log(tmp_path / "edge-1.jsonl") if e.get("request_id") == "early"]
    assert [(e["event"], e["level"]) for e in events] == [("request_cancelled", "info")]
