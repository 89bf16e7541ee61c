"""Checks on a command's arguments that need no torch and no broker: a wrong path, a malformed broker URL,
an unreadable profile or a too-long request is refused in milliseconds with one line naming the flag, not
after seconds of model loading."""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from control import ControlError, load_profile
from nodes.models.errors import ModelError
from nodes.models.loading import BUNDLED_DRAFT, BUNDLED_TARGET
from pipeline.errors import PipelineError

# A hub id is `name` or `owner/name` of letters, digits and -_. ; anything else is meant as a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def check_model(name: str | None, role: str) -> None:
    """A local model path must be a directory with config.json; a hub-id-shaped name is left to the hub."""
    path = Path(name or (BUNDLED_DRAFT if role == "draft" else BUNDLED_TARGET))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{role} model '{path}' is a directory without config.json")
        return
    if path.exists():
        raise ModelError(f"{role} model '{path}' is a file, not a model directory")
    if name is not None and not _HUB_ID.match(name):
        raise ModelError(f"{role} model '{name}' does not exist (not a local directory, not a hub id)")


def context_tokens(name: str | None) -> int | None:
    """The model's context (config.json's max_position_embeddings) when it is a local directory; None
    when it cannot be told without the hub."""
    path = Path(name or BUNDLED_TARGET) / "config.json"
    try:
        value = json.loads(path.read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def check_fits_context(prompt_tokens: int, max_new_tokens: int, context: int | None) -> None:
    """Prompt plus new tokens must fit the target's context: past it the positions are undefined."""
    if context is not None and prompt_tokens + max_new_tokens > context:
        raise ModelError(f"prompt ({prompt_tokens} tokens) + --max-new-tokens ({max_new_tokens}) exceeds the "
                         f"model's context of {context} tokens")


BROKER_SCHEMES = ("nats", "tls", "ws", "wss")  # what nats-py connects to


def check_broker_url(url: str, where: str = "--nats") -> None:
    """SCHEME://HOST[:PORT] with a scheme nats-py speaks: a typo fails here, not as an unreachable broker
    (or, for `host:port` without a scheme, as a URL whose scheme is the host's name)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number 0-65535 raises here
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in BROKER_SCHEMES or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or port == 0:
        raise PipelineError(f"{where}: '{url}' is not a broker URL (nats://HOST:PORT, tls://HOST:PORT, ws:// or "
                            "wss://)")


def check_args(a: argparse.Namespace) -> None:
    """Every command's broker URL and control profile, before its handler loads anything."""
    if hasattr(a, "nats"):  # a command that talks to a broker: the URL it would use
        if a.nats:
            check_broker_url(a.nats)
        elif os.environ.get("SPECSTOP_NATS_URL"):
            check_broker_url(os.environ["SPECSTOP_NATS_URL"], "$SPECSTOP_NATS_URL")
    if getattr(a, "profile", None):
        try:
            load_profile(a.profile)
        except (ControlError, FileNotFoundError) as exc:  # missing, not JSON, not a profile
            raise ControlError(f"--profile: {exc}") from None


def check_tokenizer(name: str | None) -> None:
    """A tokenizer is a local directory or a hub id (it needs no config.json of a model)."""
    if name is None or Path(name).is_dir():
        return
    if Path(name).exists():
        raise ModelError(f"--tokenizer '{name}' is a file, not a tokenizer directory")
    if not _HUB_ID.match(name):
        raise ModelError(f"--tokenizer '{name}' does not exist (not a local directory, not a hub id)")
