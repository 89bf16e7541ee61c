"""A hub (or a 3-node cluster) and one leaf node per edge on loopback, from the shipped configs,
with generated identities and a throwaway CA; optionally each leaf's link through a `LinkProxy`
that can cut it (link-loss tests)."""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.topology.config import JS_DOMAIN, Deployment, free_port, write_deployment
from pipeline.topology.proxy import LinkProxy
from pipeline.topology.servers import ServerProcess, check_config, start_servers
from pipeline.transport.auth import ConnectAuth

LEAF_UP = "Leafnode connection created"


class Topology:
    def __init__(self, root: Path, edges: int | list[str], verifiers: int | list[str], cluster: int = 1,
                 proxied_links: bool = False, controller: str = "control-1",
                 clients: dict[str, list[str]] | None = None):
        self.root = Path(root)
        self.edges = edges if isinstance(edges, list) else [f"edge-{i + 1}" for i in range(edges)]
        self.verifiers = verifiers if isinstance(verifiers, list) else [f"cloud-{i + 1}" for i in range(verifiers)]
        self.cluster = cluster
        self.controller = controller
        self.clients = clients  # edge id -> its device's client ids (default: one, named as the edge)
        self.proxied = proxied_links
        self.dep: Deployment | None = None
        self.hubs: list[ServerProcess] = []
        self.leaves: dict[str, ServerProcess] = {}
        self.proxies: dict[str, LinkProxy] = {}

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "Topology":
        self.dep = write_deployment(self.root, self.edges, self.verifiers, self.cluster, self.controller,
                                    clients=self.clients)
        for spec in [*self.dep.hubs, *self.dep.leaves.values()]:
            check_config(spec)
        try:
            self.hubs = start_servers(self.dep.hubs)
            if self.cluster > 1:
                self._wait_meta_leader()
            for e, spec in self.dep.leaves.items():
                if self.proxied:
                    hub = self.dep.hubs[0]
                    proxy = LinkProxy(hub.leaf_port, free_port()).start()
                    self.proxies[e] = proxy
                    spec.env["SPECSTOP_HUB_LEAF_URL"] = f"tls://127.0.0.1:{proxy.port}"
                self.leaves[e] = ServerProcess(spec).start()
            for leaf in self.leaves.values():
                leaf.wait_log(LEAF_UP)
        except Exception:
            self.stop()
            raise
        return self

    def _wait_meta_leader(self, timeout: float = 30.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("new metadata leader" in h.log_text() or "Self is new JetStream cluster metadata leader"
                   in h.log_text() for h in self.hubs):
                return
            time.sleep(0.1)
        raise PipelineError(f"the hub cluster elected no JetStream leader in {timeout:.0f} s")

    def stop(self) -> None:
        for p in [*self.leaves.values(), *self.hubs]:
            p.stop()
        for x in self.proxies.values():
            x.stop()

    def __enter__(self) -> "Topology":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- who connects where, as whom -----------------------------------------------------------------
    @property
    def ca(self) -> Path:
        return self.dep.pki["ca"]

    def hub_url(self, i: int = 0) -> str:
        return self.dep.hubs[i % len(self.dep.hubs)].url

    def leaf_url(self, edge: str) -> str:
        return self.dep.leaves[edge].url

    def auth(self, role: str, ident: str, via_leaf: bool = True) -> ConnectAuth:
        """An identity's connection settings: its seed file, the CA, for an edge on a leaf the hub's
        JetStream domain, and for a client its id (so its connections use its own inbox prefix)."""
        if self.dep is None:
            raise PipelineError("topology not started")
        i = self.dep.ident(role, ident)
        return ConnectAuth(nkey=str(i.seed_file), tls_ca=str(self.ca),
                           js_domain=JS_DOMAIN if role == "edge" and via_leaf else None,
                           client_id=ident if role == "client" else None)

    def cli_flags(self, role: str, ident: str, via_leaf: bool = True) -> list[str]:
        """The same as flags for a worker process (file paths only: no secret on a command line)."""
        a = self.auth(role, ident, via_leaf)
        return ["--nkey", a.nkey, "--tls-ca", a.tls_ca, *(["--js-domain", a.js_domain] if a.js_domain else []),
                *(["--client-id", a.client_id] if a.client_id else [])]

    # --- link loss -----------------------------------------------------------------------------------
    def cut_link(self, edge: str) -> None:
        self.proxies[edge].cut()

    def restore_link(self, edge: str) -> None:
        self.proxies[edge].restore()
