"""The shipped configs in deploy/ parse (`nats-server -t`) as rendered for a hub, a 3-node cluster and
each edge's leaf node; a missing value is one clear error; the cluster forms and every leaf links to it."""
from __future__ import annotations

import pytest

from pipeline.errors import PipelineError
from pipeline.topology.config import deploy_dir, write_deployment
from pipeline.topology.run import Topology
from pipeline.topology.servers import check_config


@pytest.mark.parametrize("cluster", [1, 3])
def test_shipped_configs_pass_nats_server_t(tmp_path, cluster):
    d = write_deployment(tmp_path, ["edge-1", "edge-2"], ["cloud-1", "cloud-2"], cluster=cluster)
    for spec in [*d.hubs, *d.leaves.values()]:
        assert "is valid" in check_config(spec)
    users = (d.hubs[0].conf.parent / "auth" / "hub-users.conf").read_text()
    for seed in (d.root / "seeds").glob("*.seed"):  # public keys only: no seed in a server's config
        assert seed.read_text().strip() not in users
    assert (d.root / "seeds" / "edge-edge-1.seed").stat().st_mode & 0o077 == 0


def test_a_missing_value_is_named(tmp_path):
    d = write_deployment(tmp_path, ["edge-1"], ["cloud-1"])
    spec = d.leaves["edge-1"]
    del spec.env["SPECSTOP_LEAF_SEED"]
    with pytest.raises(PipelineError, match="SPECSTOP_LEAF_SEED"):
        check_config(spec)


def test_every_role_has_a_template():
    for role in ("verifier", "edge", "leaf", "controller", "client", "operator"):
        assert (deploy_dir() / "auth" / f"{role}.tmpl").exists()
    for unit in ("specstop-cloud.service", "specstop-edge.service", "specstop-control.service",
                 "nats-hub.service", "nats-leaf.service"):
        assert (deploy_dir() / "systemd" / unit).exists()
    assert (deploy_dir() / "compose.yaml").exists()


@pytest.mark.slow
def test_the_three_node_cluster_forms_and_leaves_link_to_it(tmp_path):
    with Topology(tmp_path, 2, 1, cluster=3) as topo:
        for leaf in topo.leaves.values():
            assert leaf.alive()
        assert all(h.alive() for h in topo.hubs)


def _read_env(path) -> dict[str, str]:
    """An environment file as systemd reads it (KEY="value" lines)."""
    out = {}
    for line in path.read_text().splitlines():
        k, _, v = line.partition("=")
        out[k] = v.strip('"')
    return out


@pytest.mark.slow
def test_write_config_writes_a_deployment_that_starts_and_admits_each_identity(tmp_path):
    """The documented `specstop topology --write-config DIR`: servers started from the written configs and
    environment files only, every worker and client identity connects with its own env file, secrets are 0600."""
    import asyncio

    from pipeline.topology.config import ServerSpec, free_port
    from pipeline.topology.run import LEAF_UP
    from pipeline.topology.servers import ServerProcess
    from pipeline.transport import bus
    from pipeline.transport.auth import ConnectAuth
    from tests.conftest import run_cli

    out = tmp_path / "deploy"
    ports = {"--client-port": free_port(), "--leaf-port": free_port(), "--device-port": free_port()}
    r = run_cli("topology", "--write-config", str(out), "--edges", "dev-a", "--verifiers", "v1",
                "--hub-host", "127.0.0.1", "--listen", "127.0.0.1", "--client", "dev-a=app-1",
                *(x for kv in ports.items() for x in map(str, kv)), timeout=120)
    assert r.returncode == 0, r.stderr
    for secret in [*(out / "seeds").glob("*.seed"), *(out / "pki").glob("*.key"), out / "leaf-dev-a" / "leaf.env"]:
        assert secret.stat().st_mode & 0o077 == 0, secret
    hub_env, leaf_env = _read_env(out / "hub" / "hub.env"), _read_env(out / "leaf-dev-a" / "leaf.env")
    hub = ServerProcess(ServerSpec("hub", out / "hub" / "hub.conf", hub_env, ports["--client-port"])).start()
    try:
        leaf = ServerProcess(ServerSpec("leaf", out / "leaf-dev-a" / "leaf.conf", leaf_env,
                                        ports["--device-port"])).start()
        try:
            leaf.wait_log(LEAF_UP)
            for name in ("verifier-v1", "controller-control-1", "edge-dev-a", "gateway-dev-a", "client-app-1"):
                env = _read_env(out / "env" / f"{name}.env")
                auth = ConnectAuth.from_sources(env=env)
                asyncio.run(bus.probe(env["SPECSTOP_NATS_URL"], timeout=5.0, auth=auth))
                if name == "client-app-1":
                    assert auth.inbox_prefix == "_INBOX_client_app-1"
        finally:
            leaf.stop()
    finally:
        hub.stop()


@pytest.mark.parametrize("extra, says", [
    (["--hub-host", "bad host!"], "is not a host name"),
    (["--cluster", "3"], "give 3 hub hosts"),
    (["--client", "nobody=app-1"], "'nobody', which is not an edge"),
    (["--client-port", "70000"], "is not a port"),
    (["--edges", "a,a"], "names an id twice"),
    (["--bench"], "runs nothing"),
])
def test_write_config_refuses_bad_input_in_one_line(tmp_path, extra, says):
    from tests.conftest import run_cli

    r = run_cli("topology", "--write-config", str(tmp_path / "new"), "--edges", "1", "--verifiers", "1", *extra,
                timeout=120)
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "new" / "seeds").exists()


def test_write_config_refuses_a_folder_that_is_not_empty(tmp_path):
    from tests.conftest import run_cli

    (tmp_path / "keep.txt").write_text("mine")
    r = run_cli("topology", "--write-config", str(tmp_path), "--edges", "1", "--verifiers", "1", timeout=120)
    assert r.returncode == 2 and "is not an empty folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_client_id_names_the_inbox_prefix_and_a_bad_one_is_one_line():
    from pipeline.transport.auth import ConnectAuth, role_inbox

    assert ConnectAuth(client_id="app-1").inbox_prefix == "_INBOX_client_app-1" == role_inbox("client", "app-1")
    assert ConnectAuth.from_sources(env={"SPECSTOP_NATS_CLIENT_ID": "app-2"}).inbox_prefix == "_INBOX_client_app-2"
    with pytest.raises(PipelineError, match="client id 'a.b'"):
        ConnectAuth(client_id="a.b").check()
    prefixes = {role_inbox(r, i) for r in ("edge", "controller", "client", "gateway") for i in ("x", "client_x")}
    assert len(prefixes) == 8  # no role's prefix equals another's, whatever the ids
