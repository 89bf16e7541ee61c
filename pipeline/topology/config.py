"""A deployment's files from the shipped templates in `deploy/`: a throwaway CA and server
certificates (openssl CLI), one nkey per identity, the users files rendered from
`deploy/auth/*.tmpl`, and the environment each nats-server reads its config values from.

Layout written under `root`:
  pki/ca.pem, pki/ca.key (0600: only the signer needs it), pki/server.pem + .key (the hub's certificate),
  pki/leaf-<edge>.pem + .key (each device's own)
  seeds/<role>-<id>.seed                                   (0600: with the keys, the only secrets)
  hub/hub.conf (or cluster.conf) + hub/auth/hub-users.conf
  leaf-<edge>/leaf.conf + leaf-<edge>/auth/leaf-users.conf
"""
from __future__ import annotations

import os
import shutil
import socket
import string
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError
from schemas.messages import valid_id

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
JS_DOMAIN = "hub"


def deploy_dir() -> Path:
    if not (DEPLOY / "hub.conf").exists():
        raise PipelineError(f"shipped configs not found in {DEPLOY} (run from a source checkout)")
    return DEPLOY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- nkeys --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    role: str     # verifier, edge, leaf, controller, client, gateway, operator
    id: str
    seed_file: Path
    public: str

    @property
    def name(self) -> str:
        return f"{self.role}-{self.id}"


def new_identity(role: str, ident: str, seeds: Path) -> Identity:
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seeds.mkdir(parents=True, exist_ok=True)
    os.chmod(seeds, 0o700)
    path = seeds / f"{role}-{ident}.seed"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(seed.decode() + "\n")
    return Identity(role, ident, path, public)


def render_user(ident: Identity, js_domain: str = JS_DOMAIN) -> str:
    tmpl = (deploy_dir() / "auth" / f"{ident.role}.tmpl").read_text()
    return string.Template(tmpl).substitute(id=ident.id, nkey=ident.public, js=js_domain)


def render_users(idents: list[Identity], js_domain: str = JS_DOMAIN) -> str:
    body = "\n".join(render_user(i, js_domain) for i in idents)
    return f"# rendered from deploy/auth/*.tmpl: one entry per identity (public keys only)\nusers = [\n{body}]\n"


# --- PKI (openssl CLI) ---------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise PipelineError("openssl not found: it makes the throwaway CA (apt-get install openssl)")
    r = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise PipelineError(f"openssl {args[0]} failed: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}")


def _san(host: str) -> str:
    return f"IP:{host}" if all(c.isdigit() or c in ".:" for c in host) else f"DNS:{host}"


def make_cert(pki: Path, name: str, hosts: list[str], days: int = 2) -> dict[str, Path]:
    """`<name>.pem` + `<name>.key` (0600) signed by the CA in `pki`, valid for `hosts` and loopback
    (serverAuth + clientAuth, so cluster routes can present it too). EC P-256 keys: fast to make."""
    sans = ",".join(dict.fromkeys(_san(h) for h in [*hosts, "127.0.0.1", "localhost"]))
    (pki / f"{name}.ext").write_text(f"subjectAltName={sans}\n"
                                     "extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={hosts[0] if hosts else 'localhost'}", cwd=pki)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", str(days), "-extfile", f"{name}.ext", cwd=pki)
    os.chmod(pki / f"{name}.key", 0o600)
    for tmp in (f"{name}.csr", f"{name}.ext"):
        (pki / tmp).unlink()
    return {"ca": pki / "ca.pem", "cert": pki / f"{name}.pem", "key": pki / f"{name}.key"}


def make_pki(pki: Path, hub_hosts: list[str] | None = None, days: int = 2) -> dict[str, Path]:
    """A CA (its key stays with whoever signs: no server reads it) and the hub's certificate,
    `server.pem`, for `hub_hosts` and loopback."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days), "-subj", "/CN=specstop CA", cwd=pki)
    os.chmod(pki / "ca.key", 0o600)
    return make_cert(pki, "server", hub_hosts or [], days)


# --- a deployment ------------------------------------------------------------------------------------
@dataclass
class ServerSpec:
    """One nats-server: its config file, the environment the config reads, its ports."""
    name: str
    conf: Path
    env: dict[str, str]
    client_port: int
    leaf_port: int | None = None
    cluster_port: int | None = None
    host: str = "127.0.0.1"  # where its clients reach it

    @property
    def url(self) -> str:
        return f"tls://{self.host}:{self.client_port}"


@dataclass(frozen=True)
class Placement:
    """Where real servers run: the hub's host names (one per cluster node, in its certificate and in
    every URL), the address they listen on, their ports, and the port of each device's leaf server
    (on the device's 127.0.0.1). Without one, everything is on loopback with free ports."""
    hub_hosts: tuple[str, ...]
    listen: str = "0.0.0.0"
    client_port: int = 4222
    leaf_port: int = 7422
    cluster_port: int = 6222
    device_port: int = 4222


@dataclass
class Deployment:
    root: Path
    pki: dict[str, Path]
    hubs: list[ServerSpec]
    leaves: dict[str, ServerSpec]                         # edge id -> its leaf server
    identities: dict[str, Identity] = field(default_factory=dict)  # "<role>-<id>" -> identity

    def ident(self, role: str, ident: str) -> Identity:
        return self.identities[f"{role}-{ident}"]


def check_ids(edges: list[str], verifiers: list[str], controller: str,
              clients: dict[str, list[str]]) -> None:
    """Every id names subjects and inbox prefixes: valid, and unique within its role; one line per problem."""
    named = {"edge": edges, "verifier": verifiers, "controller": [controller],
             "client": [c for cs in clients.values() for c in cs]}
    for role, ids in named.items():
        for i in ids:
            if not valid_id(i):
                raise PipelineError(f"{role} id '{i[:80]}' must be 1..128 ASCII letters, digits, '-' or '_'")
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise PipelineError(f"{role} id '{dup[0]}' is given twice")
    if not edges or not verifiers:
        raise PipelineError("a deployment needs at least one edge and one verifier")
    stray = sorted(set(clients) - set(edges))
    if stray:
        raise PipelineError(f"clients are given for '{stray[0]}', which is not an edge")


def write_deployment(root: Path, edges: list[str], verifiers: list[str], cluster: int = 1,
                     controller: str = "control-1", direct_edges: bool = True,
                     clients: dict[str, list[str]] | None = None, placement: Placement | None = None,
                     cert_days: int = 2) -> Deployment:
    """All files for a hub (or a `cluster`-node cluster) and one leaf per edge: on loopback ports, or at
    `placement`. `clients`: the client identities of each edge device (default: one per device, with the
    edge's id); each reads only its own inbox prefix. `direct_edges`: the hub also knows each edge and its
    clients, so an edge can connect to it directly (the leaf hop's extra latency is measured against that).
    Each server has its own certificate: a device never holds the hub's key."""
    if cluster not in (1, 3):
        raise PipelineError(f"--cluster must be 1 or 3, got {cluster}")
    clients = {e: [e] for e in edges} if clients is None else clients
    check_ids(edges, verifiers, controller, clients)
    if placement is not None and len(placement.hub_hosts) != cluster:
        raise PipelineError(f"give {cluster} hub host{'s' if cluster > 1 else ''} (one per hub node), "
                            f"got {len(placement.hub_hosts)}")
    deploy = deploy_dir()
    root.mkdir(parents=True, exist_ok=True)
    hub_hosts = list(placement.hub_hosts) if placement else ["127.0.0.1"] * cluster
    pki = make_pki(root / "pki", sorted(set(hub_hosts)), cert_days)
    seeds = root / "seeds"
    ids: dict[str, Identity] = {}

    def add(role: str, ident: str) -> Identity:
        i = new_identity(role, ident, seeds)
        ids[i.name] = i
        return i

    hub_users = [add("verifier", v) for v in verifiers] + [add("controller", controller), add("operator", "ops")]
    hub_users += [add("leaf", e) for e in edges]
    leaf_users: dict[str, list[Identity]] = {}
    for e in edges:
        edge_i, client_is = add("edge", e), [add("client", c) for c in clients.get(e, [])]
        leaf_users[e] = [edge_i, *client_is, add("gateway", e)]
        if direct_edges:
            hub_users += [edge_i, *client_is]

    def tls(cert: dict[str, Path]) -> dict[str, str]:
        return {"SPECSTOP_TLS_CERT": str(cert["cert"]), "SPECSTOP_TLS_KEY": str(cert["key"]),
                "SPECSTOP_TLS_CA": str(cert["ca"])}

    def ports(n: int) -> tuple[int, int, int]:
        return ((placement.client_port, placement.leaf_port, placement.cluster_port) if placement
                else (free_port(), free_port(), free_port()))

    hubs: list[ServerSpec] = []
    hub_ports = [ports(n) for n in range(cluster)]
    for n in range(cluster):
        d = root / (f"hub-{n + 1}" if cluster > 1 else "hub")
        (d / "auth").mkdir(parents=True, exist_ok=True)
        shutil.copy(deploy / "hub.conf", d / "hub.conf")
        conf = d / "hub.conf"
        if cluster > 1:
            shutil.copy(deploy / "cluster.conf", d / "cluster.conf")
            conf = d / "cluster.conf"
        (d / "auth" / "hub-users.conf").write_text(render_users(hub_users))
        cport, lport, rport = hub_ports[n]
        spec = ServerSpec(d.name, conf, {}, cport, lport, rport if cluster > 1 else None, hub_hosts[n])
        spec.env = {"SPECSTOP_SERVER_NAME": d.name, "SPECSTOP_HOST": placement.listen if placement else "127.0.0.1",
                    "SPECSTOP_CLIENT_PORT": str(spec.client_port), "SPECSTOP_LEAF_PORT": str(spec.leaf_port),
                    "SPECSTOP_STORE_DIR": str(d / "jetstream"), "SPECSTOP_JS_DOMAIN": JS_DOMAIN, **tls(pki)}
        if cluster > 1:
            spec.env["SPECSTOP_CLUSTER_PORT"] = str(spec.cluster_port)
            spec.env["SPECSTOP_ROUTES"] = "[" + ", ".join(f"nats-route://{h}:{p[2]}"
                                                          for h, p in zip(hub_hosts, hub_ports)) + "]"
        hubs.append(spec)

    leaves: dict[str, ServerSpec] = {}
    for e in edges:
        d = root / f"leaf-{e}"
        (d / "auth").mkdir(parents=True, exist_ok=True)
        shutil.copy(deploy / "leaf.conf", d / "leaf.conf")
        (d / "auth" / "leaf-users.conf").write_text(render_users(leaf_users[e]))
        spec = ServerSpec(d.name, d / "leaf.conf", {}, placement.device_port if placement else free_port())
        spec.env = {"SPECSTOP_SERVER_NAME": d.name, "SPECSTOP_HOST": "127.0.0.1",
                    "SPECSTOP_CLIENT_PORT": str(spec.client_port),
                    "SPECSTOP_HUB_LEAF_URL": "[" + ", ".join(f"tls://{h.host}:{h.leaf_port}" for h in hubs) + "]",
                    "SPECSTOP_LEAF_SEED": ids[f"leaf-{e}"].seed_file.read_text().strip(),
                    **tls(make_cert(root / "pki", f"leaf-{e}", [], cert_days))}
        leaves[e] = spec
    return Deployment(root, pki, hubs, leaves, ids)
