"""Load a draft/target pair by hub id or local path and check they share a tokenizer.

Real pairs (Qwen2.5-0.5B/7B) share a tokenizer but pad their embedding tables
differently, so we compare tokenizers — never `config.vocab_size` — and slice
logits to the shared vocabulary.
"""
from __future__ import annotations

import functools
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from nodes.models.errors import ModelError
from nodes.models.train_pair import BUNDLED_DIR

BUNDLED_TARGET = str(BUNDLED_DIR / "target")
BUNDLED_DRAFT = str(BUNDLED_DIR / "draft")
BUNDLED_PROFILE = BUNDLED_DIR / "profile.json"  # measured cost/acceptance profile of the pair
BUNDLED_TREES = BUNDLED_DIR / "trees.json"  # measured depth x rank acceptance and tree round cost


def set_threads(threads: int | None) -> None:
    """Cap torch's intra-op threads (these machines have 2 cores shared by all nodes)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set once in this process


def _resolve(name: str) -> str:
    """A local directory if one exists at `name`, else a hub id (path-like names must exist)."""
    p = Path(name).expanduser()
    if p.exists():
        return str(p)
    if name.startswith((".", "/", "~")) or not name.strip():
        raise ModelError(f"model path '{name}' does not exist")
    return name


@functools.cache
def hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be reached (None: it can), found in at most ~2 s.

    Without this check transformers retries an unreachable hub for ~50 s per file before it fails."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=2.0).close()
    except OSError as exc:
        return f"{host}: {exc.strerror or type(exc).__name__}"
    return None


def _from_pretrained(loader, name: str, what: str, **kwargs):
    """`loader.from_pretrained` by local path or hub id; an unreachable hub is one fast line, not minutes of
    retries (a hub id already in the local cache still loads)."""
    source = _resolve(name)
    local_only = source == name and not Path(source).exists() and hub_offline_reason() is not None
    try:
        return loader.from_pretrained(source, local_files_only=local_only, **kwargs)
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors
        if local_only:
            raise ModelError(f"cannot load {what} '{name}': not a local path, not in the Hugging Face cache, and "
                             f"the hub is unreachable ({hub_offline_reason()}); pass a local model folder") from None
        raise ModelError(f"cannot load {what} '{name}': {_first_line(exc)}") from None


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, name, "tokenizer")


def _quiet_transformers() -> None:
    """No progress bars or advisory warnings: stderr is for one-line errors and JSON logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


DTYPES = ("bfloat16", "float16", "float32")


def resolve_dtype(device: str, dtype: str | None) -> str:
    """The weights' dtype: `dtype` when given (checked), else float32 on a CPU and bfloat16 on a GPU
    (half precision on a CPU is slower than float32 there; on a GPU it halves the bytes every step reads)."""
    if dtype is None:
        return "float32" if str(device).split(":")[0] in ("cpu", "mps") else "bfloat16"
    if dtype not in DTYPES:
        raise ModelError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    return dtype


def load_model(name: str, device: str = "cpu", dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    model = _from_pretrained(AutoModelForCausalLM, name, "model", dtype=getattr(torch, dtype))
    return model.to(device).eval()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def tokenizer_fingerprint(tok) -> str:
    """Hash of the vocabulary and special tokens: equal fingerprints = shared tokenizer."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    h = hashlib.sha256(repr(vocab).encode())
    h.update(repr((tok.eos_token_id, tok.pad_token_id)).encode())
    return h.hexdigest()[:16]


def check_same_tokenizer(draft_tok, target_tok, draft_name: str, target_name: str) -> None:
    if tokenizer_fingerprint(draft_tok) != tokenizer_fingerprint(target_tok):
        raise ModelError(
            f"draft '{draft_name}' and target '{target_name}' do not share a tokenizer "
            f"(vocabularies differ: {len(draft_tok)} vs {len(target_tok)} tokens)"
        )


def stop_token_ids(tok, *models) -> frozenset[int]:
    ids: set[int] = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    for m in models:
        eos = getattr(m.generation_config, "eos_token_id", None) if m is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return frozenset(ids)


@dataclass
class ModelPair:
    """A draft and a target that share `tokenizer`; logits are sliced to `vocab_size`."""

    draft: Any
    target: Any
    tokenizer: Any
    vocab_size: int
    eos_ids: frozenset[int]
    draft_name: str
    target_name: str
    device: str = "cpu"
    dtype: str = "float32"  # of both models' weights (and of the acceptance head run with them)


def load_pair(draft: str | None = None, target: str | None = None, device: str = "cpu",
              dtype: str | None = None, load_draft: bool = True, load_target: bool = True) -> ModelPair:
    """Load either or both halves (edge needs only the draft, cloud only the target); `dtype` None: the
    device's default (`resolve_dtype`)."""
    dtype = resolve_dtype(device, dtype)
    draft = draft or BUNDLED_DRAFT
    target = target or BUNDLED_TARGET
    tgt_tok = load_tokenizer(target)
    if load_draft:
        check_same_tokenizer(load_tokenizer(draft), tgt_tok, draft, target)
    dm = load_model(draft, device, dtype) if load_draft else None
    tm = load_model(target, device, dtype) if load_target else None
    vocab = len(tgt_tok)
    for m, name in ((dm, draft), (tm, target)):
        if m is not None and m.get_output_embeddings().weight.shape[0] < vocab:
            raise ModelError(f"model '{name}' has fewer output logits than its tokenizer's {vocab} tokens")
    return ModelPair(dm, tm, tgt_tok, vocab, stop_token_ids(tgt_tok, dm, tm), draft, target, device, dtype)


def model_hash(name: str) -> str:
    """Short content hash of a local model's weights (for run manifests)."""
    p = Path(name)
    if not p.is_dir():
        return f"hub:{name}"
    h = hashlib.sha256()
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.json")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
