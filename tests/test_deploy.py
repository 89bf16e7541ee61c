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
