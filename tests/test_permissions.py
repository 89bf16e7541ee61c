"""Every forbidden action is refused by the broker, on the real hub/leaf topology from deploy/ (TLS on,
nkeys): an edge cannot answer for a verifier, read or steer another edge, take requests outside its queue
group, or draft, end sessions, report timing or send heartbeats in another's name; a verifier takes
first-round drafts only in its queue group and publishes nothing but its heartbeat; a client cannot draft,
and no client or gateway reads another identity's replies (each has its own inbox prefix); nobody connects
without credentials. Each refusal is checked twice where
it can be: the offender hears the broker's permissions violation, and the victim receives nothing.
The device's own server is not trusted: the same actions with the device's *link* identity (what a
tampered leaf server would send) are refused at the hub."""
from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest

from pipeline.transport.confirm import confirm_sent
from pipeline.errors import PipelineError
from pipeline.topology.run import Topology
from pipeline.transport import bus
from pipeline.transport.auth import ConnectAuth, role_inbox
from tests.waiting import NotReached, eventually

pytestmark = pytest.mark.slow  # a hub, two leaves and ~20 connections over TLS (~30 s)


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    t = Topology(tmp_path_factory.mktemp("perm"), 2, 1,
                 clients={"edge-1": ["alice", "bob"], "edge-2": ["edge-2"]}).start()
    yield t
    t.stop()


class Conn:
    """A connection that keeps the broker's errors (permissions violations arrive as async -ERR)."""

    def __init__(self):
        self.errors: list[str] = []
        self.nc = None

    async def open(self, url: str, auth: ConnectAuth, inbox: str | None = None):
        async def err(e):
            self.errors.append(str(e))

        self.nc = await nats.connect(url, error_cb=err, allow_reconnect=False, inbox_prefix=inbox or auth.inbox_prefix or "_INBOX",
                                     **auth.connect_kwargs())
        return self

    async def violations(self, expect: bool = True, wait: float = 0.4, count: int = 1) -> list[str]:
        """The permission violations reported so far.

        Callers that expect a refusal assert this is non-empty, so the helper
        returns as soon as one arrives (bounded by a generous timeout); when
        `expect=False` waits `wait` seconds instead: for an allowed action the
        sleep is the only evidence of absence, so callers pair it with a check
        that the message was delivered.
        """
        try:
            await confirm_sent(self.nc, 2.0)
        except Exception:
            pass
        def seen() -> list[str]:
            return [e for e in self.errors if "permissions violation" in e.lower()]
        if not expect:
            await asyncio.sleep(wait)  # absence has no event to await; see docstring
            return seen()
        try:
            return await eventually(lambda: len(seen()) >= count and seen(), timeout=max(wait, 10.0), what="a permissions violation")
        except NotReached:
            return []

    async def close(self):
        await self.nc.close()


async def conn(url, auth, inbox=None) -> Conn:
    return await Conn().open(url, auth, inbox)


async def received(sub, wait: float = 0.5) -> list:
    got = []
    try:
        while True:
            got.append(await sub.next_msg(timeout=wait))
    except Exception:
        return got


async def until_delivered(attempt, what: str, timeout: float = 20.0):
    """Retry `attempt` (a delivery that fails while interest has not yet crossed between the leaf and
    the hub) until it succeeds: the proof that later deliveries, and later refusals, are meaningful."""
    async def once():
        try:
            return await attempt()
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return None
    return await eventually(once, timeout=timeout, what=what)


async def test_a_connection_without_credentials_is_refused(topo):
    for url in (topo.hub_url(), topo.leaf_url("edge-1")):
        with pytest.raises(PipelineError, match="refused these credentials"):
            await bus.probe(url, auth=ConnectAuth(tls_ca=str(topo.ca)))


async def test_a_connection_without_tls_is_refused(topo):
    with pytest.raises(PipelineError):
        await bus.probe(topo.hub_url().replace("tls://", "nats://"), auth=ConnectAuth())


async def test_bad_credential_files_are_one_line_errors(topo, tmp_path):
    bad = tmp_path / "bad.seed"
    bad.write_text("not a seed\n")
    with pytest.raises(PipelineError, match="holds no user nkey seed"):
        ConnectAuth(nkey=str(bad)).check()
    with pytest.raises(PipelineError, match="does not exist"):
        ConnectAuth(tls_ca=str(tmp_path / "missing-ca.pem")).check()
    notpem = tmp_path / "ca.pem"
    notpem.write_text("hello")
    with pytest.raises(PipelineError, match="is not a PEM certificate"):
        ConnectAuth(tls_ca=str(notpem)).check()
    # a seed nobody registered: refused by the broker, reported without the seed
    import nkeys, os
    stranger = tmp_path / "stranger.seed"
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    stranger.write_text(seed)
    with pytest.raises(PipelineError, match="refused these credentials") as info:
        await bus.probe(topo.hub_url(), auth=ConnectAuth(nkey=str(stranger), tls_ca=str(topo.ca)))
    assert seed not in str(info.value)
    assert "SU" not in repr(ConnectAuth(nkey=str(stranger), tls_ca=str(topo.ca))).replace(str(tmp_path), "")


async def test_an_edge_cannot_send_a_verdict_to_another_edges_inbox(topo):
    victim = await conn(topo.leaf_url("edge-1"), topo.auth("edge", "edge-1"), role_inbox("edge", "edge-1"))
    inbox = victim.nc.new_inbox()
    sub = await victim.nc.subscribe(inbox)
    await confirm_sent(victim.nc, 10.0)
    # let the inbox's interest spread (no identity may publish to an edge's inbox unasked, so there is no
    # probe to wait on); the refusals below come from the publishers' own servers either way
    await asyncio.sleep(0.3)
    # the other edge, on its own device
    edge2 = await conn(topo.leaf_url("edge-2"), topo.auth("edge", "edge-2"), role_inbox("edge", "edge-2"))
    await edge2.nc.publish(inbox, b"forged verdict")
    assert await edge2.violations(), "edge-2's server accepted a publish to edge-1's inbox"
    # the other device's link identity, straight at the hub (a tampered leaf server)
    link2 = await conn(topo.hub_url(), topo.auth("leaf", "edge-2"))
    await link2.nc.publish(inbox, b"forged verdict")
    assert await link2.violations(), "the hub accepted leaf-2 publishing to edge-1's inbox"
    # a verifier may answer only drafts it received
    verifier = await conn(topo.hub_url(), topo.auth("verifier", "cloud-1"))
    await verifier.nc.publish(inbox, b"unsolicited verdict")
    assert await verifier.violations(), "a verifier sent a verdict nobody asked it for"
    assert await received(sub) == []
    for c in (victim, edge2, link2, verifier):
        await c.close()


async def test_only_a_verifier_that_received_the_draft_answers_it_across_the_leaf(topo):
    verifier = await conn(topo.hub_url(), topo.auth("verifier", "cloud-1"))

    async def answer(msg):
        await msg.respond(b"verdict")
        await msg.respond(b"a second reply is refused")

    await verifier.nc.subscribe("specstop.draft.*", queue="verifiers", cb=answer)
    await confirm_sent(verifier.nc, 10.0)
    edge = await conn(topo.leaf_url("edge-1"), topo.auth("edge", "edge-1"), role_inbox("edge", "edge-1"))
    reply = await until_delivered(lambda: edge.nc.request("specstop.draft.edge-1", b"draft", timeout=1),
                                  "the verifier's interest crosses to the leaf")
    assert reply.data == b"verdict"
    assert await verifier.violations(), "allow_responses let the verifier reply twice"
    await edge.close()
    await verifier.close()


@pytest.mark.parametrize("subject", ["specstop.policy.edge-1", "specstop.generate.edge-1", "_INBOX_edge_edge-1.>",
                                     "specstop.draft.*", "specstop.draft.edge-1", "specstop.end.*",
                                     "specstop.timing.>", "specstop.alive.edge.*", "_INBOX.>"])
async def test_an_edge_cannot_subscribe_to_another_edges_subjects(topo, subject):
    edge2 = await conn(topo.leaf_url("edge-2"), topo.auth("edge", "edge-2"), role_inbox("edge", "edge-2"))
    await edge2.nc.subscribe(subject)
    assert await edge2.violations(), f"edge-2 subscribed to {subject}"
    link2 = await conn(topo.hub_url(), topo.auth("leaf", "edge-2"))
    await link2.nc.subscribe(subject)
    assert await link2.violations(), f"leaf-2's link identity subscribed to {subject} at the hub"
    await edge2.close()
    await link2.close()


async def test_an_edge_reports_timing_only_under_its_own_id_and_publishes_no_policy(topo):
    ops = await conn(topo.hub_url(), topo.auth("operator", "ops"))
    timing = await ops.nc.subscribe("specstop.timing.>")
    policy = await ops.nc.subscribe("specstop.policy.>")
    await confirm_sent(ops.nc, 10.0)
    edge2 = await conn(topo.leaf_url("edge-2"), topo.auth("edge", "edge-2"), role_inbox("edge", "edge-2"))
    async def own():  # allowed; repeated until the operator's interest has reached the leaf
        await edge2.nc.publish("specstop.timing.edge-2", b"own")
        return await timing.next_msg(timeout=0.5)

    first = await until_delivered(own, "edge-2's own timing event reaches the hub")
    assert {m.subject for m in [first, *await received(timing)]} == {"specstop.timing.edge-2"}
    for subject in ("specstop.timing.edge-1", "specstop.policy.edge-1", "specstop.policy.edge-2",
                    "$KV.specstop_policies.edge-2.auto"):
        edge2.errors.clear()
        await edge2.nc.publish(subject, b"forged")
        assert await edge2.violations(), f"edge-2 published {subject}"
    link2 = await conn(topo.hub_url(), topo.auth("leaf", "edge-2"))
    for subject in ("specstop.timing.edge-1", "specstop.policy.edge-1", "specstop.policy.edge-2"):
        link2.errors.clear()
        await link2.nc.publish(subject, b"forged")
        assert await link2.violations(), f"the hub took {subject} from leaf-2's link identity"
    assert await received(timing) == [] and await received(policy) == []
    for c in (ops, edge2, link2):
        await c.close()


async def test_only_the_controller_publishes_policy_updates(topo):
    edge1 = await conn(topo.leaf_url("edge-1"), topo.auth("edge", "edge-1"), role_inbox("edge", "edge-1"))
    sub = await edge1.nc.subscribe("specstop.policy.edge-1")
    await confirm_sent(edge1.nc, 10.0)
    ctl = await conn(topo.hub_url(), topo.auth("controller", "control-1"), role_inbox("controller", "control-1"))

    async def probe():  # the controller's updates reach the edge: a forged one would too, were it allowed
        await ctl.nc.publish("specstop.policy.edge-1", b"probe")
        return await sub.next_msg(timeout=0.5)

    await until_delivered(probe, "the edge's interest in its policy subject reaches the hub")
    await received(sub)  # drop the probes still in flight
    for role, ident in (("verifier", "cloud-1"), ("client", "alice")):
        c = await conn(topo.hub_url(), topo.auth(role, ident))
        await c.nc.publish("specstop.policy.edge-1", b"forged")
        assert await c.violations(), f"{role} published a policy update"
        await c.close()
    await ctl.nc.publish("specstop.policy.edge-1", b"update")
    assert await ctl.violations(expect=False) == []
    assert [m.data for m in await received(sub, 2.0)] == [b"update"]
    await ctl.close()
    await edge1.close()


@pytest.mark.parametrize("subject", ["specstop.draft.edge-1", "specstop.draft.edge-1.cloud-1", "specstop.end.edge-1",
                                     "specstop.timing.edge-1", "specstop.alive.edge.edge-1"])
async def test_a_client_cannot_publish_a_draft(topo, subject):
    for url in (topo.leaf_url("edge-1"), topo.hub_url()):
        c = await conn(url, topo.auth("client", "alice"))
        await c.nc.publish(subject, b"draft")
        assert await c.violations(), f"a client published {subject} at {url}"
        await c.close()


async def test_a_device_gateway_reads_its_own_edges_timing_only_and_sends_no_draft(topo):
    g = await conn(topo.leaf_url("edge-1"), topo.auth("gateway", "edge-1"))
    own = await g.nc.subscribe("specstop.timing.edge-1")
    await g.nc.publish("specstop.generate.edge-1", b"x")  # its edge's generate subject: allowed
    assert not await g.violations(expect=False)
    await g.nc.subscribe("specstop.timing.edge-2")
    assert await g.violations(), "a gateway read another edge's timing events"
    await own.unsubscribe()
    await g.close()
    for subject in ("specstop.draft.edge-1", "specstop.generate.edge-2", "specstop.policy.edge-1"):
        g = await conn(topo.leaf_url("edge-1"), topo.auth("gateway", "edge-1"))
        await g.nc.publish(subject, b"x")
        assert await g.violations(), f"a gateway published {subject}"
        await g.close()


async def test_an_edge_reads_its_policy_back_from_the_bucket_through_its_leaf_without_a_violation(topo):
    """What the edge does at start and after a reconnect (EdgeWorker._restore_from_bucket): list its own
    keys from the bucket's stream state and get them, through the leaf in the hub's domain. Every
    JetStream call it makes must be in its permissions, and it needs no consumer (kv.keys()'s watcher
    could report no keys while the first one was in flight)."""
    from pipeline.transport.jetstream import bucket_keys, policy_bucket

    ctl = await conn(topo.hub_url(), topo.auth("controller", "control-1", via_leaf=False), role_inbox("controller", "control-1"))
    kv = await policy_bucket(ctl.nc.jetstream())
    await kv.put("edge-1.auto", b"snapshot")
    auth = topo.auth("edge", "edge-1")
    e = await conn(topo.leaf_url("edge-1"), auth, role_inbox("edge", "edge-1"))
    await kv.put("edge-2.auto", b"not mine")
    ejs = e.nc.jetstream(domain=auth.js_domain)
    ekv = await ejs.key_value("specstop_policies")
    keys = await bucket_keys(ejs, "edge-1")
    assert keys == ["edge-1.auto"] and (await ekv.get("edge-1.auto")).value == b"snapshot"
    assert not await e.violations(expect=False), e.errors
    await e.close()
    await ctl.close()


# --- private inboxes: no identity reads another's replies ------------------------------------------------
@pytest.mark.parametrize("subject", ["_INBOX_client_alice.>", "_INBOX.>", "_INBOX_gateway_edge-1.>",
                                     "_INBOX_edge_edge-1.>", ">"])
async def test_a_client_cannot_subscribe_to_another_identitys_inbox(topo, subject):
    for url in (topo.leaf_url("edge-1"), topo.hub_url()):
        bob = await conn(url, topo.auth("client", "bob"))
        await bob.nc.subscribe(subject)
        assert await bob.violations(), f"client bob subscribed to {subject} at {url}"
        await bob.close()


async def test_a_client_on_the_shared_inbox_prefix_cannot_read_its_replies(topo):
    """Without its client id, nats-py's default `_INBOX.` prefix is refused: there is no shared inbox."""
    auth = topo.auth("client", "bob")
    c = await conn(topo.leaf_url("edge-1"), auth, inbox="_INBOX")
    await c.nc.subscribe(c.nc.new_inbox())
    assert await c.violations(), "a client read replies under the shared _INBOX. prefix"
    await c.close()


class _Log:
    """What bus.connect reports (nats_error events carry the broker's permissions violations)."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def warning(self, event, **kw):
        self.events.append((event, kw))

    info = warning


async def test_a_generate_streams_to_its_client_and_no_other_client_sees_it(topo):
    """Alice's request goes through an edge-1 identity in the queue group `edges` (answering as the edge
    does: chunks to the request's reply inbox); her stream arrives under her own prefix, through the same
    `bus.connect` every client command uses; bob, on the same device, reads nothing of it."""
    from pipeline.transport.client import generate_stream
    from schemas.codec import Int32Array, decode, encode
    from schemas.messages import GenerateRequest, TokenChunk

    replies: list[str] = []

    async def answer(msg):
        req = decode(msg.data, expect=(GenerateRequest,))
        replies.append(msg.reply)
        await msg.respond(encode(TokenChunk(req.request_id, 0, Int32Array([104, 105]), "hi")))
        await msg.respond(encode(TokenChunk(req.request_id, 1, Int32Array([33]), "!", done=True,
                                            finish_reason="length", full_ids=Int32Array([104, 105, 33]),
                                            full_text="hi!")))

    edge = await conn(topo.leaf_url("edge-1"), topo.auth("edge", "edge-1"), role_inbox("edge", "edge-1"))
    await edge.nc.subscribe("specstop.generate", queue="edges", cb=answer)
    await confirm_sent(edge.nc, 10.0)
    bob = await conn(topo.leaf_url("edge-1"), topo.auth("client", "bob"))
    spies = [await bob.nc.subscribe(s) for s in ("_INBOX_client_bob.>", "_INBOX_client_alice.>", "_INBOX.>")]
    await confirm_sent(bob.nc, 10.0)
    log = _Log()
    alice = await bus.connect(topo.leaf_url("edge-1"), "client-alice", log, long_lived=False,
                              auth=topo.auth("client", "alice"))
    try:
        res = await generate_stream(alice, GenerateRequest("perm-stream-1", prompt="hello", max_new_tokens=3),
                                    timeout_s=10.0, wait_for_edge_s=5.0)
        assert res.ok and res.token_ids == [104, 105, 33] and res.text == "hi!", (res.error_code, res.error)
        assert replies and all(r.startswith("_INBOX_client_alice.") for r in replies), replies
        assert not [e for e in log.events if e[0] == "nats_error"], log.events
        for spy in spies:
            assert await received(spy) == []
        assert len(await bob.violations(count=2)) == 2  # alice's prefix and the shared one were refused
    finally:
        await alice.close()
        await bob.close()
        await edge.close()


async def test_a_gateway_reads_only_its_own_inbox_and_its_edges_heartbeat(topo):
    g = await conn(topo.leaf_url("edge-1"), topo.auth("gateway", "edge-1"), role_inbox("gateway", "edge-1"))
    await g.nc.subscribe(g.nc.new_inbox())
    await g.nc.subscribe("specstop.alive.edge.edge-1")
    assert not await g.violations(expect=False), g.errors
    for subject in ("_INBOX.>", "_INBOX_client_alice.>", "specstop.alive.edge.edge-2"):
        g.errors.clear()
        await g.nc.subscribe(subject)
        assert await g.violations(), f"a gateway subscribed to {subject}"
    await g.close()


# --- queue groups: an edge cannot take every request, a verifier every draft ---------------------------
async def test_an_edge_cannot_take_generate_requests_outside_its_queue_group(topo):
    for url, auth in ((topo.leaf_url("edge-2"), topo.auth("edge", "edge-2")),
                      (topo.hub_url(), topo.auth("edge", "edge-2", via_leaf=False))):
        for queue in (None, "thieves"):
            e = await conn(url, auth, role_inbox("edge", "edge-2"))
            await (e.nc.subscribe("specstop.generate", queue=queue) if queue else e.nc.subscribe("specstop.generate"))
            assert await e.violations(), f"edge-2 subscribed to specstop.generate (queue {queue}) at {url}"
            await e.close()


async def test_an_edge_takes_generate_requests_in_its_queue_group(topo):
    e = await conn(topo.leaf_url("edge-1"), topo.auth("edge", "edge-1"), role_inbox("edge", "edge-1"))
    sub = await e.nc.subscribe("specstop.generate", queue="edges")
    await confirm_sent(e.nc, 10.0)
    alice = await conn(topo.leaf_url("edge-1"), topo.auth("client", "alice"))
    await alice.nc.publish("specstop.generate", b"request", reply=alice.nc.new_inbox())
    assert [m.data for m in await received(sub, 2.0)] == [b"request"]
    assert not await e.violations(expect=False) and not await alice.violations(expect=False)
    await alice.close()
    await e.close()


@pytest.mark.parametrize("subject", ["specstop.draft.*", "specstop.draft.edge-1", "specstop.draft.edge-1.cloud-2",
                                     "specstop.draft.>"])
async def test_a_verifier_takes_first_round_drafts_only_in_its_queue_group(topo, subject):
    v = await conn(topo.hub_url(), topo.auth("verifier", "cloud-1"))
    await v.nc.subscribe(subject)
    assert await v.violations(), f"a verifier subscribed to {subject} outside its queue group"
    await v.close()


# --- nobody speaks in another's name --------------------------------------------------------------------
@pytest.mark.parametrize("subject", ["specstop.draft.edge-1", "specstop.draft.edge-1.cloud-1", "specstop.end.edge-1",
                                     "specstop.alive.edge.edge-1"])
async def test_an_edge_cannot_draft_end_or_send_a_heartbeat_in_another_edges_name(topo, subject):
    ops = await conn(topo.hub_url(), topo.auth("operator", "ops"))
    seen = await ops.nc.subscribe(subject)
    await confirm_sent(ops.nc, 10.0)
    edge2 = await conn(topo.leaf_url("edge-2"), topo.auth("edge", "edge-2"), role_inbox("edge", "edge-2"))
    await edge2.nc.publish(subject, b"forged")
    assert await edge2.violations(), f"edge-2 published {subject}"
    link2 = await conn(topo.hub_url(), topo.auth("leaf", "edge-2"))
    await link2.nc.publish(subject, b"forged")
    assert await link2.violations(), f"the hub took {subject} from leaf-2's link identity"
    assert await received(seen) == []
    for c in (ops, edge2, link2):
        await c.close()


@pytest.mark.parametrize("subject", ["specstop.alive.verifier.cloud-2", "specstop.alive.edge.edge-1",
                                     "specstop.draft.edge-1", "specstop.generate", "specstop.cancel",
                                     "specstop.policy.edge-1", "specstop.timing.edge-1"])
async def test_a_verifier_publishes_nothing_but_its_own_heartbeat(topo, subject):
    v = await conn(topo.hub_url(), topo.auth("verifier", "cloud-1"))
    await v.nc.publish("specstop.alive.verifier.cloud-1", b"alive")
    assert not await v.violations(expect=False), v.errors
    await v.nc.publish(subject, b"forged")
    assert await v.violations(), f"a verifier published {subject}"
    await v.close()


async def test_heartbeats_cross_the_leaf_both_ways(topo):
    """What liveness needs: an edge on its leaf hears the verifiers' heartbeats, the verifiers hear the
    edge's, a device's gateway hears its edge's."""
    v = await conn(topo.hub_url(), topo.auth("verifier", "cloud-1"))
    edges_alive = await v.nc.subscribe("specstop.alive.edge.*")
    e = await conn(topo.leaf_url("edge-1"), topo.auth("edge", "edge-1"), role_inbox("edge", "edge-1"))
    verifiers_alive = await e.nc.subscribe("specstop.alive.verifier.*")
    g = await conn(topo.leaf_url("edge-1"), topo.auth("gateway", "edge-1"), role_inbox("gateway", "edge-1"))
    own_edge = await g.nc.subscribe("specstop.alive.edge.edge-1")
    for c in (v, e, g):
        await confirm_sent(c.nc, 10.0)
    deadline = asyncio.get_running_loop().time() + 10.0
    got_v, got_e, got_g = [], [], []
    while not (got_v and got_e and got_g) and asyncio.get_running_loop().time() < deadline:
        await e.nc.publish("specstop.alive.edge.edge-1", b"edge alive")  # interest crosses the link in time
        await v.nc.publish("specstop.alive.verifier.cloud-1", b"verifier alive")
        got_v += [m.data for m in await received(edges_alive, 0.2)]
        got_e += [m.data for m in await received(verifiers_alive, 0.2)]
        got_g += [m.data for m in await received(own_edge, 0.2)]
    assert set(got_v) == {b"edge alive"} and set(got_e) == {b"verifier alive"} and set(got_g) == {b"edge alive"}
    for c in (v, e, g):
        assert not await c.violations(expect=False), c.errors
        await c.close()
