"""Range checks for policy state that arrives from elsewhere (a snapshot over the wire,
a KV bucket). Each raises ControlError naming the field, so a bad snapshot is
refused whole before any of it is applied; a policy restored from a checked
state can always choose without raising.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from control.types import ControlError

MAX_COUNT = float(1 << 53)   # counts beyond this are not real observation counts
MAX_TABLE = 64               # channel states (and transition rows) one policy keeps
MAX_KEY_LEN = 64


def number(value: Any, name: str, lo: float = 0.0, hi: float = MAX_COUNT * 1e7) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ControlError(f"snapshot: '{name}' must be a number")
    v = float(value)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ControlError(f"snapshot: '{name}' = {value!r} is outside [{lo:g}, {hi:g}]")
    return v


def integer(value: Any, name: str, lo: int = 0, hi: int = int(MAX_COUNT)) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ControlError(f"snapshot: '{name}' must be an integer in [{lo}, {hi}]")
    return value


def array(value: Any, name: str, length: int, lo: float = 0.0, hi: float = MAX_COUNT * 1e7) -> np.ndarray:
    """A list of `length` finite numbers in [lo, hi]."""
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ControlError(f"snapshot: '{name}' must be a list of {length} numbers")
    return np.array([number(x, f"{name}[{i}]", lo, hi) for i, x in enumerate(value)], dtype=float)


def table(value: Any, name: str, max_items: int = MAX_TABLE) -> dict:
    """A map with at most `max_items` string keys of bounded length."""
    if not isinstance(value, dict):
        raise ControlError(f"snapshot: '{name}' must be a map")
    if len(value) > max_items:
        raise ControlError(f"snapshot: '{name}' has {len(value)} entries (at most {max_items})")
    for k in value:
        if not isinstance(k, str) or len(k) > MAX_KEY_LEN:
            raise ControlError(f"snapshot: '{name}' keys must be strings of at most {MAX_KEY_LEN} characters")
    return value


def field(state: dict, name: str) -> Any:
    if name not in state:
        raise ControlError(f"snapshot: missing field '{name}'")
    return state[name]
