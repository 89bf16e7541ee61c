"""`specstop topology --write-config DIR`: a complete deployment's files for real hosts, checked.

What `config.write_deployment` renders (CA, one certificate per server, one nkey per identity, the
users files from `deploy/auth/*.tmpl`, the server configs), plus the environment files the systemd
units in `deploy/systemd/` read:

  hub/hub.env (hub-N/hub.env for a cluster)   the values hub.conf / cluster.conf read
  leaf-<edge>/leaf.env                        the values leaf.conf reads, with the device's link seed (0600)
  env/<role>-<id>.env                         one per worker or client identity: SPECSTOP_NATS_URL,
                                              SPECSTOP_NATS_NKEY, SPECSTOP_NATS_CA (+ the JetStream domain
                                              for an edge, the client id for a client)

Every path in them is absolute under DIR: copy DIR to the same path on each host (or edit the paths).
Each server config is checked with `nats-server -t` before the command returns.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.topology.config import JS_DOMAIN, Deployment, Placement, ServerSpec, write_deployment

HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")  # a DNS name or an IPv4 address
LISTEN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^[0-9a-fA-F:]+$")  # or IPv6
CERT_DAYS = 825  # about two years: rotate before (deploy/README.md, "Rotate a credential")


def check_host(host: str, what: str, pattern: re.Pattern = HOST) -> str:
    if not pattern.match(host):
        raise PipelineError(f"{what} '{host[:80]}' is not a host name or "
                            f"{'IP' if pattern is LISTEN else 'IPv4'} address")
    return host


def _env_file(path: Path, values: dict[str, str], secret: bool = False) -> None:
    """KEY="value" lines (systemd EnvironmentFile, docker compose env_file and `set -a; . FILE` read them)."""
    for k, v in values.items():
        if any(c in v for c in '"\\\n$`'):
            raise PipelineError(f"{k} for {path.name} holds a character an environment file cannot carry: {v[:80]}")
    text = "".join(f'{k}="{v}"\n' for k, v in values.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _worker_envs(dep: Deployment, clients: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    hub, ca = dep.hubs[0], str(dep.pki["ca"])

    def base(role: str, ident: str, url: str) -> dict[str, str]:
        return {"SPECSTOP_NATS_URL": url, "SPECSTOP_NATS_NKEY": str(dep.ident(role, ident).seed_file),
                "SPECSTOP_NATS_CA": ca}

    envs: dict[str, dict[str, str]] = {}
    for i in dep.identities.values():
        if i.role in ("verifier", "controller", "operator"):
            envs[i.name] = base(i.role, i.id, hub.url)
    for e, leaf in dep.leaves.items():
        envs[f"edge-{e}"] = {**base("edge", e, leaf.url), "SPECSTOP_NATS_JS_DOMAIN": JS_DOMAIN}
        envs[f"gateway-{e}"] = base("gateway", e, leaf.url)  # run it with --edge <e>: its inbox follows
        for c in clients.get(e, []):
            envs[f"client-{c}"] = {**base("client", c, leaf.url), "SPECSTOP_NATS_CLIENT_ID": c}
    return envs


def write_config(out: Path, edges: list[str], verifiers: list[str], clients: dict[str, list[str]] | None,
                 cluster: int, placement: Placement, controller: str = "control-1") -> dict:
    """Write and check the set; a summary of what is where."""
    from pipeline.topology.servers import check_config

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PipelineError(f"{out} exists and is not an empty folder: give a new one (nothing is overwritten)")
    out = out.resolve()
    clients = {e: [e] for e in edges} if clients is None else clients
    for h in placement.hub_hosts:
        check_host(h, "hub host")
    check_host(placement.listen, "listen address", LISTEN)
    dep = write_deployment(out, edges, verifiers, cluster, controller, clients=clients, placement=placement,
                           cert_days=CERT_DAYS)
    servers: list[tuple[ServerSpec, Path, bool]] = [(h, h.conf.parent / "hub.env", False) for h in dep.hubs]
    servers += [(leaf, leaf.conf.parent / "leaf.env", True) for leaf in dep.leaves.values()]
    for spec, env_path, secret in servers:
        _env_file(env_path, spec.env, secret)
    (out / "env").mkdir()
    envs = _worker_envs(dep, clients)
    for name, values in envs.items():
        _env_file(out / "env" / f"{name}.env", values)
    for spec, _, _ in servers:
        check_config(spec)
    return {"dir": str(out), "hubs": [str(h.conf) for h in dep.hubs],
            "leaves": {e: str(s.conf) for e, s in dep.leaves.items()},
            "identities": sorted(dep.identities), "worker_env": sorted(f"env/{n}.env" for n in envs),
            "hub_urls": [h.url for h in dep.hubs], "checked": "nats-server -t: every config is valid"}
