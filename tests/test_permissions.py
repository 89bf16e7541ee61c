"""Every forbidden action is refused by the broker, on the real hub/leaf topology from deploy/ (TLS on,
nkeys): an edge cannot answer for a verifier, read or steer another edge, or report timing in another's
name; a client cannot draft; nobody connects without credentials. Each refusal is checked twice where
it can be: the offender hears the broker's permissions violation, and the victim receives nothing.
The device's own server is not trusted: the same actions with the device's *link* identity (what a
tampered leaf server would send) are refused at the hub."""
from __future__ import annotations

import asyncio

import nats
import pytest

from nodes.nats_confirm import confirm_sent
from pipeline.errors import PipelineError
from pipeline.topology.run import Topology
from pipeline.transport import bus
from pipeline.transport.auth import ConnectAuth, role_inbox

pytestmark = pytest.mark.slow  # a hub, two leaves and ~20 connections over TLS (~30 s)


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    t = Topology(tmp_path_factory.mktemp("perm"), 2, 1).start()
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

        self.nc = await nats.connect(url, error_cb=err, allow_reconnect=False, inbox_prefix=inbox or "_INBOX",
                                     **auth.connect_kwargs())
        return self

    async def violations(self, wait: float = 0.4) -> list[str]:
        try:
            await confirm_sent(self.nc, 2.0)
        except Exception:
            pass
        await asyncio.sleep(wait)
        return [e for e in self.errors if "permissions violation" in e.lower()]

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
    victim = await conn(topo.leaf_url("edge-1"), topo.auth("edge", "edge-1"), role_inbox("edge-1"))
    inbox = victim.nc.new_inbox()
    sub = await victim.nc.subscribe(inbox)
    await confirm_sent(victim.nc, 10.0)
    await asyncio.sleep(0.3)
    # the other edge, on its own device
    edge2 = await conn(topo.leaf_url("edge-2"), topo.auth("edge", "edge-2"), role_inbox("edge-2"))
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

    await verifier.nc.subscribe("specstop.verify", queue="verifiers", cb=answer)
    await confirm_sent(verifier.nc, 10.0)
    edge = await conn(topo.leaf_url("edge-1"), topo.auth("edge", "edge-1"), role_inbox("edge-1"))
    await asyncio.sleep(0.5)  # the verifier's interest crosses to the leaf
    reply = await edge.nc.request("specstop.verify", b"draft", timeout=5)
    assert reply.data == b"verdict"
    assert await verifier.violations(), "allow_responses let the verifier reply twice"
    await edge.close()
    await verifier.close()


@pytest.mark.parametrize("subject", ["specstop.policy.edge-1", "specstop.generate.edge-1", "_INBOX_edge-1.>",
                                     "specstop.verify", "specstop.timing.>"])
async def test_an_edge_cannot_subscribe_to_another_edges_subjects(topo, subject):
    edge2 = await conn(topo.leaf_url("edge-2"), topo.auth("edge", "edge-2"), role_inbox("edge-2"))
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
    edge2 = await conn(topo.leaf_url("edge-2"), topo.auth("edge", "edge-2"), role_inbox("edge-2"))
    await asyncio.sleep(0.3)
    await edge2.nc.publish("specstop.timing.edge-2", b"own")        # allowed
    await confirm_sent(edge2.nc, 10.0)
    assert [m.subject for m in await received(timing)] == ["specstop.timing.edge-2"]
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
    edge1 = await conn(topo.leaf_url("edge-1"), topo.auth("edge", "edge-1"), role_inbox("edge-1"))
    sub = await edge1.nc.subscribe("specstop.policy.edge-1")
    await confirm_sent(edge1.nc, 10.0)
    await asyncio.sleep(0.5)
    for role, ident in (("verifier", "cloud-1"), ("client", "edge-1")):
        c = await conn(topo.hub_url(), topo.auth(role, ident))
        await c.nc.publish("specstop.policy.edge-1", b"forged")
        assert await c.violations(), f"{role} published a policy update"
        await c.close()
    ctl = await conn(topo.hub_url(), topo.auth("controller", "control-1"), role_inbox("control-1"))
    await ctl.nc.publish("specstop.policy.edge-1", b"update")
    assert await ctl.violations() == []
    assert [m.data for m in await received(sub, 2.0)] == [b"update"]
    await ctl.close()
    await edge1.close()


@pytest.mark.parametrize("subject", ["specstop.verify", "specstop.verify.cloud-1", "specstop.end",
                                     "specstop.timing.edge-1"])
async def test_a_client_cannot_publish_a_draft(topo, subject):
    for url in (topo.leaf_url("edge-1"), topo.hub_url()):
        c = await conn(url, topo.auth("client", "edge-1"))
        await c.nc.publish(subject, b"draft")
        assert await c.violations(), f"a client published {subject} at {url}"
        await c.close()


async def test_a_device_gateway_reads_its_own_edges_timing_only_and_sends_no_draft(topo):
    g = await conn(topo.leaf_url("edge-1"), topo.auth("gateway", "edge-1"))
    own = await g.nc.subscribe("specstop.timing.edge-1")
    await g.nc.publish("specstop.generate.edge-1", b"x")  # its edge's generate subject: allowed
    assert not await g.violations()
    await g.nc.subscribe("specstop.timing.edge-2")
    assert await g.violations(), "a gateway read another edge's timing events"
    await own.unsubscribe()
    await g.close()
    for subject in ("specstop.verify", "specstop.generate.edge-2", "specstop.policy.edge-1"):
        g = await conn(topo.leaf_url("edge-1"), topo.auth("gateway", "edge-1"))
        await g.nc.publish(subject, b"x")
        assert await g.violations(), f"a gateway published {subject}"
        await g.close()


async def test_an_edge_reads_its_policy_back_from_the_bucket_through_its_leaf_without_a_violation(topo):
    """What the edge does at start and after a reconnect (EdgeWorker._restore_from_bucket): list its own
    keys from the bucket's stream state and get them, through the leaf in the hub's domain. Every
    JetStream call it makes must be in its permissions, and it needs no consumer (kv.keys()'s watcher
    could report no keys while the first one was in flight)."""
    from nodes.jetstream import bucket_keys, policy_bucket

    ctl = await conn(topo.hub_url(), topo.auth("controller", "control-1", via_leaf=False), role_inbox("control-1"))
    kv = await policy_bucket(ctl.nc.jetstream())
    await kv.put("edge-1.auto", b"snapshot")
    auth = topo.auth("edge", "edge-1")
    e = await conn(topo.leaf_url("edge-1"), auth, role_inbox("edge-1"))
    await kv.put("edge-2.auto", b"not mine")
    ejs = e.nc.jetstream(domain=auth.js_domain)
    ekv = await ejs.key_value("specstop_policies")
    keys = await bucket_keys(ejs, "edge-1")
    assert keys == ["edge-1.auto"] and (await ekv.get("edge-1.auto")).value == b"snapshot"
    assert not await e.violations(), e.errors
    await e.close()
    await ctl.close()
