"""Cost/acceptance profiles shared by the theory, the simulator and live calibration.

Tabular: {"name", "round_compute_ms": {"1": ms, ..., "K": ms}, "survival": [S1..SK]}.
Parametric: {"name", "alpha", "draft_ms_per_token", "draft_ms_fixed", "verify_ms_fixed",
"verify_ms_per_token", "max_length"} with geometric acceptance S(i) = alpha**i and
C(L) = draft_fixed + L*draft_per_token + verify_fixed + (L+1)*verify_per_token.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from control.types import ControlError

PARAMETRIC_FIELDS = ("alpha", "draft_ms_per_token", "draft_ms_fixed", "verify_ms_fixed",
                     "verify_ms_per_token", "max_length")


@dataclass(frozen=True)
class Profile:
    """compute_ms[L-1] = C(L); survival[i-1] = S(i) = P(first i drafts all accepted).
    `regimes`: a control.regimes.HiddenRegimes where acceptance runs in streaks (generated families
    only; `survival` is then the regimes' stationary mixture)."""

    name: str
    compute_ms: np.ndarray
    survival: np.ndarray
    regimes: object | None = None

    @property
    def max_length(self) -> int:
        return len(self.compute_ms)

    def truncated(self, max_length: int) -> "Profile":
        k = min(max_length, self.max_length)
        regimes = None if self.regimes is None else self.regimes.truncated(k)
        return Profile(self.name, self.compute_ms[:k], self.survival[:k], regimes)

    def to_dict(self) -> dict:
        return {"name": self.name,
                "round_compute_ms": {str(i + 1): float(c) for i, c in enumerate(self.compute_ms)},
                "survival": [float(s) for s in self.survival]}


def _number(d: dict, key: str, where: str) -> float:
    if key not in d:
        raise ControlError(f"profile {where}: missing field '{key}'")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ControlError(f"profile {where}: field '{key}' must be a finite number, got {v!r}")
    return float(v)


def profile_from_dict(d: object, where: str = "") -> Profile:
    where = where or "<dict>"
    if not isinstance(d, dict):
        raise ControlError(f"profile {where}: expected a JSON object, got {type(d).__name__}")
    name = d.get("name", Path(where).stem)
    if not isinstance(name, str):
        raise ControlError(f"profile {where}: field 'name' must be a string")
    if "round_compute_ms" in d or "survival" in d:
        return _tabular(d, name, where)
    if "alpha" in d:
        return _parametric(d, name, where)
    raise ControlError(f"profile {where}: needs 'round_compute_ms' and 'survival' (tabular) or 'alpha' (parametric)")


def _tabular(d: dict, name: str, where: str) -> Profile:
    rc = d.get("round_compute_ms")
    if not isinstance(rc, dict) or not rc:
        raise ControlError(f"profile {where}: field 'round_compute_ms' must be a non-empty object {{\"1\": ms, ...}}")
    try:
        lengths = sorted(int(k) for k in rc)
    except (TypeError, ValueError):
        raise ControlError(f"profile {where}: 'round_compute_ms' keys must be draft lengths \"1\"..\"K\"") from None
    k = len(lengths)
    if lengths != list(range(1, k + 1)):
        missing = sorted(set(range(1, max(lengths) + 1)) - set(lengths))
        raise ControlError(f"profile {where}: 'round_compute_ms' is missing lengths {missing or [1]}")
    compute = np.array([_number(rc, str(i), where + " round_compute_ms") for i in lengths])
    if (compute < 0).any():
        raise ControlError(f"profile {where}: 'round_compute_ms' has a negative time")
    surv = d.get("survival")
    if not isinstance(surv, list) or len(surv) < k:
        raise ControlError(f"profile {where}: field 'survival' must be a list of at least {k} probabilities")
    s = np.array([_number({"survival": x}, "survival", where) for x in surv[:k]])
    _check_survival(s, where)
    return Profile(name, compute, s)


def _check_survival(s: np.ndarray, where: str) -> None:
    if ((s < 0) | (s > 1)).any():
        raise ControlError(f"profile {where}: 'survival' values must lie in [0, 1]")
    if (np.diff(s) > 1e-12).any():
        raise ControlError(f"profile {where}: 'survival' must be non-increasing")


def _parametric(d: dict, name: str, where: str) -> Profile:
    vals = {f: _number(d, f, where) for f in PARAMETRIC_FIELDS}
    if not 0 <= vals["alpha"] < 1:
        raise ControlError(f"profile {where}: field 'alpha' must be in [0, 1)")
    for f in PARAMETRIC_FIELDS[1:5]:
        if vals[f] < 0:
            raise ControlError(f"profile {where}: field '{f}' must be >= 0")
    k = int(vals["max_length"])
    if k < 1 or k != vals["max_length"]:
        raise ControlError(f"profile {where}: field 'max_length' must be a positive integer")
    return parametric_profile(name, vals["alpha"], vals["draft_ms_per_token"], vals["draft_ms_fixed"],
                              vals["verify_ms_fixed"], vals["verify_ms_per_token"], k)


def parametric_profile(name: str, alpha: float, draft_ms_per_token: float, draft_ms_fixed: float,
                       verify_ms_fixed: float, verify_ms_per_token: float, max_length: int) -> Profile:
    L = np.arange(1, max_length + 1)
    compute = draft_ms_fixed + L * draft_ms_per_token + verify_ms_fixed + (L + 1) * verify_ms_per_token
    return Profile(name, compute.astype(float), alpha ** L.astype(float))


def load_profile(path: str | Path) -> Profile:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ControlError(f"profile {p}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"profile {p}: not valid JSON ({exc})") from None
    return profile_from_dict(data, str(p))
