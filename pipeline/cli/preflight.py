"""Checks on a command's model arguments that need no torch: a wrong path or a too-long request is
refused in milliseconds with one line, not after seconds of model loading."""
from __future__ import annotations

import json
import re
from pathlib import Path

from nodes.models.errors import ModelError
from nodes.models.loading import BUNDLED_DRAFT, BUNDLED_TARGET

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
