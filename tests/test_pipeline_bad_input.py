"""Workers that receive garbage answer (or log) a clear error and keep serving."""
from __future__ import annotations

import asyncio

import msgpack
import pytest

from pipeline.transport.confirm import confirm_sent
from pipeline.transport.client import generate_stream
from schemas import subjects
from schemas.codec import DEFAULT_MAX_PAYLOAD, Int32Array, Limits, decode, encode
from schemas.messages import DraftMsg, ErrorMsg, GenerateRequest
from tests.waiting import eventually
from tests.pipeline_fixtures import cluster, read_log

LIMITS = Limits()


async def ask(client, subject: str, payload: bytes) -> ErrorMsg:
    reply = await client.request(subject, payload, timeout=5)
    return decode(reply.data, LIMITS, expect=(ErrorMsg,))


async def still_serves(client) -> None:
    res = await generate_stream(client, GenerateRequest("after-garbage", prompt="The pass statement",
                                                        max_new_tokens=8, policy="fixed:2"), 30)
    assert res.ok and len(res.token_ids) == 8


@pytest.mark.parametrize("subject", [subjects.draft("edge-x"), subjects.GENERATE])
async def test_garbage_with_a_reply_inbox_gets_a_clear_error_reply(broker, pair, tmp_path, subject):
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        err = await ask(client, subject, b"\xc1\xff not msgpack")
        assert err.code == "bad_message" and "msgpack" in err.message
        await still_serves(client)


async def test_garbage_without_a_reply_inbox_is_logged_and_dropped(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        await client.publish(subjects.draft("edge-x"), b"garbage")
        await client.publish(subjects.GENERATE, msgpack.packb([1, 2, 3]))
        await confirm_sent(client, 10.0)

        def logged(node: str) -> list[dict]:
            return [e for e in read_log(tmp_path / f"{node}.jsonl") if e["event"] == "bad_message"]

        for node in ("cloud-1", "edge-1"):  # each worker has read its garbage, then serves the next request
            bad = await eventually(lambda: logged(node), what=f"{node} logs bad_message")
            assert bad[0]["replied"] is False and bad[0]["error"], node
        await still_serves(client)


async def test_round_for_an_unknown_request_asks_for_the_context(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        dm = DraftMsg("nobody", 4, 0, "edge-x", Int32Array([1, 2]), 0)
        err = await ask(client, subjects.draft("edge-x", "cloud-1"), encode(dm))
        assert err.code == "resend_context" and err.request_id == "nobody"


async def test_oversized_payload_gets_a_too_large_reply(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        err = await ask(client, subjects.draft("edge-x"), b"\x00" * (DEFAULT_MAX_PAYLOAD + 10))
        assert err.code == "too_large" and "exceeds" in err.message
        await still_serves(client)


async def test_wrong_schema_version_gets_a_version_reply(broker, pair, tmp_path):
    body = msgpack.unpackb(encode(GenerateRequest("v", prompt="x")))
    body["v"] = 99
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        err = await ask(client, subjects.GENERATE, msgpack.packb(body))
        assert err.code == "version" and "99" in err.message


async def test_unknown_policy_in_a_request_is_refused_clearly(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        res = await generate_stream(client, GenerateRequest("bad-policy", prompt="x", policy="nope"), 10)
        assert res.error and "unknown policy 'nope'" in res.error


async def test_session_cap_answers_overloaded(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path, max_sessions=1) as (client, edge, clouds):
        first = DraftMsg("hold-1", 0, 0, "edge-x", Int32Array([104]), 0, context=Int32Array([84, 104]))
        ok = await client.request(subjects.draft("edge-x"), encode(first), timeout=5)
        assert decode(ok.data, LIMITS).verifier_id == "cloud-1"
        second = DraftMsg("hold-2", 0, 0, "edge-x", Int32Array([104]), 0, context=Int32Array([84, 104]))
        err = await ask(client, subjects.draft("edge-x"), encode(second))
        assert err.code == "overloaded"


async def test_drafts_and_final_drafts_naming_another_edge_than_their_subject_are_refused(broker, pair, tmp_path):
    async with cluster(broker.url, pair, tmp_path) as (client, edge, clouds):
        held = DraftMsg("held", 0, 0, "edge-x", Int32Array([104]), 0, context=Int32Array([84, 104]), session="n")
        ok = await client.request(subjects.draft("edge-x"), encode(held), timeout=5)
        assert decode(ok.data, LIMITS).verifier_id == "cloud-1"
        forged = DraftMsg("other", 0, 0, "edge-x", Int32Array([104]), 0, context=Int32Array([84]), session="n")
        err = await ask(client, subjects.draft("edge-y"), encode(forged))
        assert err.code == "bad_message" and "'edge-x'" in err.message and "'edge-y'" in err.message
        end = DraftMsg("held", 1, 0, "edge-x", Int32Array(), 0, final=True, session="n")
        err = await ask(client, subjects.session_end("edge-y"), encode(end))
        assert err.code == "bad_message" and "'edge-y'" in err.message
        assert set(clouds[0].sessions) == {("edge-x", "held", "n")}  # nothing created, nothing ended
        ack = await client.request(subjects.session_end("edge-x"), encode(end), timeout=5)
        assert decode(ack.data, LIMITS).what == "session_end" and not clouds[0].sessions
        await still_serves(client)
    bad = [e for e in read_log(tmp_path / "cloud-1.jsonl") if e["event"] == "bad_message"]
    assert {e["subject"] for e in bad} == {subjects.draft("edge-y"), subjects.session_end("edge-y")}
