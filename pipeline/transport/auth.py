"""Who a process is to the broker: credentials and TLS for every NATS connection.

Credentials come from files or the environment, never from the command line
(a flag names a *file*; secrets are read from it) and never reach a log: the
repr of `ConnectAuth` shows paths only. Every bad input (a missing file, a seed
that does not parse, a CA that is not a certificate) is one `PipelineError`
naming the file and what was wrong.

| flag | environment | what |
|---|---|---|
| `--creds FILE` | `SPECSTOP_NATS_CREDS` | JWT user credentials file (operator mode) |
| `--nkey FILE` | `SPECSTOP_NATS_NKEY` | file holding a user nkey seed (`SU...`): the shipped configs use these |
| `--user NAME` | `SPECSTOP_NATS_USER` | user name (with a password) |
| `--password-file FILE` | `SPECSTOP_NATS_PASSWORD_FILE` or `SPECSTOP_NATS_PASSWORD` (the value) | password |
| `--tls-ca FILE` | `SPECSTOP_NATS_CA` | CA bundle the server's certificate must chain to (turns TLS on) |
| `--tls-cert FILE`, `--tls-key FILE` | `SPECSTOP_NATS_CERT`, `SPECSTOP_NATS_KEY` | client certificate (mutual TLS) |
| `--js-domain NAME` | `SPECSTOP_NATS_JS_DOMAIN` | JetStream domain of the hub (an edge on a leaf node reaches the hub's streams through it) |
| `--client-id ID` | `SPECSTOP_NATS_CLIENT_ID` | id of a `client` identity: its connections use the inbox prefix `_INBOX_client_<ID>`, the only one its permissions let it read |

Every identity reads replies only under its own inbox prefix (`role_inbox`): workers derive theirs from
their node id (an edge `--id e1` uses `_INBOX_edge_e1`), a device gateway from `--edge`, and a client
from `--client-id`, its one source.
"""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import PipelineError
from schemas.messages import valid_id

ENV = {
    "creds": "SPECSTOP_NATS_CREDS",
    "nkey": "SPECSTOP_NATS_NKEY",
    "user": "SPECSTOP_NATS_USER",
    "password_file": "SPECSTOP_NATS_PASSWORD_FILE",
    "tls_ca": "SPECSTOP_NATS_CA",
    "tls_cert": "SPECSTOP_NATS_CERT",
    "tls_key": "SPECSTOP_NATS_KEY",
    "js_domain": "SPECSTOP_NATS_JS_DOMAIN",
    "client_id": "SPECSTOP_NATS_CLIENT_ID",
}
PASSWORD_ENV = "SPECSTOP_NATS_PASSWORD"


INBOX_ROLES = ("edge", "controller", "client", "gateway")


def role_inbox(role: str, ident: str) -> str:
    """Inbox prefix of one identity (`_INBOX_<role>_<id>`): the shipped permissions let each edge,
    controller, client and gateway subscribe under its own prefix only, so nobody else reads its
    replies (token streams, verdicts) or learns the inbox a cancel or resume must name. The role is
    part of the token: a client and an edge may share an id (`client-e1`, `edge-e1`) and no id can
    make one role's prefix equal another's (no role name is a prefix of another)."""
    if role not in INBOX_ROLES:
        raise PipelineError(f"no inbox prefix for role '{role}' (one of {', '.join(INBOX_ROLES)})")
    return f"_INBOX_{role}_{ident}"


@dataclass(frozen=True)
class ConnectAuth:
    creds: str | None = None
    nkey: str | None = None
    user: str | None = None
    password_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    js_domain: str | None = None
    client_id: str | None = None
    password: str | None = field(default=None, repr=False)  # from the environment only; never printed

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> "ConnectAuth":
        """Flags (argparse attributes `nats_<name>`) win over the environment."""
        flags = flags or {}
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            if f.name == "password":
                continue
            v = flags.get(f"nats_{f.name}") or env.get(ENV[f.name]) or None
            values[f.name] = v
        password = None if values["password_file"] else (env.get(PASSWORD_ENV) or None)
        auth = cls(**values, password=password)
        auth.check()
        return auth

    @property
    def tls_on(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    def check(self) -> None:
        """Refuse a bad combination or a bad file now, with one line naming it."""
        chosen = [n for n, v in (("--creds", self.creds), ("--nkey", self.nkey), ("--user", self.user)) if v]
        if len(chosen) > 1:
            raise PipelineError(f"give one broker identity, not {' and '.join(chosen)}")
        if (self.password_file or self.password) and not self.user:
            raise PipelineError(f"a password ({ENV['password_file']} / {PASSWORD_ENV}) needs --user / {ENV['user']}")
        if self.user and not (self.password_file or self.password):
            raise PipelineError(f"--user needs --password-file or {PASSWORD_ENV}")
        if self.client_id is not None and not valid_id(self.client_id):
            raise PipelineError(f"client id '{self.client_id[:80]}' (--client-id / {ENV['client_id']}) must be "
                                "1..128 ASCII letters, digits, '-' or '_'")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise PipelineError("--tls-cert and --tls-key go together")
        if self.creds:
            text = _read(self.creds, "credentials file")
            if "BEGIN NATS USER JWT" not in text or "NKEY SEED" not in text:
                raise PipelineError(f"credentials file {self.creds} holds no user JWT and nkey seed")
        if self.nkey:
            self.nkey_seed()
        if self.password_file:
            if not _read(self.password_file, "password file").strip():
                raise PipelineError(f"password file {self.password_file} is empty")
        if self.tls_on:
            self.ssl_context()

    def nkey_seed(self) -> str:
        seed = _read(self.nkey, "nkey seed file").strip()
        try:
            import nkeys

            kp = nkeys.from_seed(bytearray(seed.encode()))
            if not kp.public_key.startswith(b"U"):
                raise ValueError
        except Exception:
            raise PipelineError(f"nkey seed file {self.nkey} holds no user nkey seed (SU...)") from None
        return seed

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls_on:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.tls_ca:
            _read(self.tls_ca, "TLS CA file")
            try:
                ctx.load_verify_locations(cafile=self.tls_ca)
            except (ssl.SSLError, OSError, ValueError):
                raise PipelineError(f"TLS CA file {self.tls_ca} is not a PEM certificate") from None
        if self.tls_cert:
            _read(self.tls_cert, "TLS certificate")
            _read(self.tls_key, "TLS key")
            try:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            except (ssl.SSLError, OSError, ValueError):
                raise PipelineError(f"TLS certificate {self.tls_cert} and key {self.tls_key} do not load "
                                    "as a PEM pair") from None
        return ctx

    @property
    def inbox_prefix(self) -> str | None:
        """The client identity's own inbox prefix, if this process is a client with an id."""
        return role_inbox("client", self.client_id) if self.client_id else None

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect` (secrets read from their files here, at connect time)."""
        kw: dict[str, Any] = {}
        if self.creds:
            kw["user_credentials"] = self.creds
        elif self.nkey:
            kw["nkeys_seed_str"] = self.nkey_seed()
        elif self.user:
            kw["user"] = self.user
            kw["password"] = (_read(self.password_file, "password file").strip() if self.password_file
                              else self.password)
        ctx = self.ssl_context()
        if ctx is not None:
            kw["tls"] = ctx
        return kw


def _read(path: str | None, what: str) -> str:
    if not path:
        raise PipelineError(f"no {what} given")
    p = Path(path)
    try:
        return p.read_text()
    except FileNotFoundError:
        raise PipelineError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{what} {path} cannot be read ({type(exc).__name__})") from None


_default: ConnectAuth | None = None


def configure(auth: ConnectAuth | None) -> None:
    """The identity every connection of this process uses unless given another (set once by the CLI)."""
    global _default
    _default = auth


def default_auth() -> ConnectAuth:
    """The configured identity, else one read from the environment."""
    global _default
    if _default is None:
        _default = ConnectAuth.from_sources()
    return _default
