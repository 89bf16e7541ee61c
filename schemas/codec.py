"""Versioned msgpack codec with strict validation.

Every message is a msgpack map {"v": SCHEMA_VERSION, "t": type, ...fields}.
Decoding: size check, msgpack (ext types refused), then field-by-field
validation against the message's dataclass. Every failure raises SchemaError,
whose `code` says what kind of failure it was, for the error reply.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from array import array
from dataclasses import dataclass
from typing import Any

import msgpack

SCHEMA_VERSION = 1
DEFAULT_MAX_PAYLOAD = 256 * 1024  # well below nats-server's 1 MiB default max_payload


class SchemaError(ValueError):
    """A message that could not be decoded or failed validation; `code` goes into the error reply."""

    def __init__(self, message: str, code: str = "bad_message"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Limits:
    """What one message may make a receiver hold or spend (checked while decoding)."""

    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_draft_length: int = 32
    vocab_size: int = 1 << 31
    max_context_tokens: int = 32768
    max_prompt_chars: int = 65536


class Int32Array(list):
    """Marker type: a list of ints packed on the wire as little-endian int32 bytes."""


class Float32Array(list):
    """Marker type: a list of floats packed as float32 bytes."""


_REGISTRY: dict[str, type] = {}


def message(name: str):
    """Class decorator: register a dataclass as wire message type `name`."""

    def wrap(cls):
        cls.TYPE = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _pack_value(v: Any) -> Any:
    if isinstance(v, Int32Array):
        return array("i", v).tobytes()
    if isinstance(v, Float32Array):
        return array("f", v).tobytes()
    return v


def encode(msg: Any) -> bytes:
    body = {"v": SCHEMA_VERSION, "t": type(msg).TYPE}
    omit = getattr(type(msg), "OMIT_WHEN_NONE", ())
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if value is None and f.name in omit:
            continue
        body[f.name] = _pack_value(value)
    return msgpack.packb(body, use_bin_type=True)


def _refuse_ext(code: int, data: bytes):
    raise SchemaError(f"msgpack ext type {code} is not allowed")


def unpack_map(payload: bytes, limits: Limits = Limits()) -> dict:
    """The first gate of every message: bounded size, valid msgpack with no ext types, a map."""
    if len(payload) > limits.max_payload:
        raise SchemaError(f"payload of {len(payload)} bytes exceeds the {limits.max_payload}-byte limit", "too_large")
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    except SchemaError:
        raise
    except (ValueError, TypeError) as exc:  # every msgpack decode error is a ValueError subclass
        raise SchemaError(f"not valid msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise SchemaError(f"message must be a map, got {type(body).__name__}")
    return body


def decode(payload: bytes, limits: Limits = Limits(), expect: tuple[type, ...] | None = None) -> Any:
    body = unpack_map(payload, limits)
    v = body.get("v")
    if type(v) is not int or v != SCHEMA_VERSION:
        raise SchemaError(f"schema version {_short(v)} is not supported (this build speaks {SCHEMA_VERSION})",
                          "version")
    t = body.get("t")
    cls = _REGISTRY.get(t) if isinstance(t, str) else None
    if cls is None:
        raise SchemaError(f"unknown message type {_short(t)}")
    if expect is not None and cls not in expect:
        names = ", ".join(c.TYPE for c in expect)
        raise SchemaError(f"expected a {names} message, got {cls.TYPE!r}")
    msg = _build(cls, body)
    check = getattr(msg, "validate", None)
    if check is not None:
        check(limits)
    return msg


def _short(value: Any) -> str:
    """repr of a hostile value, cut so that an error line stays one short line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_FIELDS: dict[type, tuple[tuple[dataclasses.Field, Any, bool], ...]] = {}


def _fields(cls: type) -> tuple[tuple[dataclasses.Field, Any, bool], ...]:
    """(field, type hint, has default) per field, resolved once per class (hot path)."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = tuple(
            (f, hints[f.name], f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
            for f in dataclasses.fields(cls))
    return _FIELDS[cls]


def _build(cls: type, body: dict) -> Any:
    kwargs = {}
    names = set()
    for f, hint, has_default in _fields(cls):
        names.add(f.name)
        if f.name not in body:
            if has_default:
                continue
            raise SchemaError(f"{cls.TYPE}: missing field '{f.name}'")
        kwargs[f.name] = _coerce(body[f.name], hint, f"{cls.TYPE}.{f.name}")
    extra = set(body) - names - {"v", "t"}
    if extra:
        raise SchemaError(f"{cls.TYPE}: unknown fields {_short(sorted(map(str, extra)))}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if hint is Int32Array or hint is Float32Array:
        if not isinstance(value, bytes) or len(value) % 4:
            raise SchemaError(f"{where}: must be bytes of 4-byte items")
        arr = array("i" if hint is Int32Array else "f")
        arr.frombytes(value)
        out = hint(arr)
        if hint is Float32Array and not all(math.isfinite(x) for x in out):
            raise SchemaError(f"{where}: non-finite value")
        return out
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: must be a bool")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{where}: must be an int")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SchemaError(f"{where}: must be a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(f"{where}: must be a string")
        return value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: must be a map")
        return value
    raise SchemaError(f"{where}: unsupported field type {hint}")  # pragma: no cover
