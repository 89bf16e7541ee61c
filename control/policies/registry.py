"""`make_policy(spec, ...)`: one entry point from a spec string to a policy object."""
from __future__ import annotations

import math

from control.policies.auto import AutoPolicy
from control.policies.base import Policy
from control.policies.simple import (
    ConfidencePolicy, FixedPolicy, HFHeuristicPolicy, OraclePolicy, StaticPolicy, TargetOnlyPolicy,
)
from control.policies.specdec import DEFAULT_THRESHOLD, DelaySpecDecPolicy, SpecDecPolicy
from control.policies.ucb import ContextualUcbSpecStop, UcbSpecStop
from control.profile import Profile
from control.types import ControlError

TARGET_ONLY = "target-only"
MAX_SPEC_LEN = 64
POLICY_SPECS = (TARGET_ONLY, "auto", "auto-blind", "fixed:K", "oracle", "static:D", "ucb-specstop[:beta]",
                "ucb-specstop-scaled[:beta]", "naive-ucb[:beta]", "naive-ucb-scaled[:beta]", "ucb-specstop-ctx[:beta]",
                "hf-heuristic", "hf-confidence[:threshold]", "specdec++[:H]", "specdec++-delay")
DEFAULT_MAX_LENGTH = 8


def _arg(spec: str, kind, default=None):
    name, _, arg = spec.partition(":")
    if not arg:
        if default is None:
            raise ControlError(f"policy '{spec}': needs an argument ({name}:VALUE)")
        return default
    try:
        value = kind(arg)
    except ValueError:
        raise ControlError(f"policy '{spec}': argument '{arg}' is not a valid {kind.__name__}") from None
    if kind is float and not math.isfinite(value):
        raise ControlError(f"policy '{spec}': argument '{arg}' is not a finite number")
    return value


def _need_profile(spec: str, profile: Profile | None) -> Profile:
    if profile is None:
        raise ControlError(f"policy '{spec}' needs a profile (--profile FILE)")
    return profile


def make_policy(spec: str, max_length: int = DEFAULT_MAX_LENGTH, seed: int = 0,
                profile: Profile | None = None) -> Policy:
    if not isinstance(spec, str) or not spec.strip():
        raise ControlError("policy spec is empty")
    spec = spec.strip()
    if len(spec) > MAX_SPEC_LEN:
        raise ControlError(f"policy spec is longer than {MAX_SPEC_LEN} characters")
    name = spec.partition(":")[0]
    if spec == TARGET_ONLY:
        return TargetOnlyPolicy(max_length)
    if name == "fixed":
        return FixedPolicy(_arg(spec, int), max_length)
    if name == "auto":
        return AutoPolicy(max_length, seed=seed)
    if name == "auto-blind":
        return AutoPolicy(max_length, seed=seed, use_state=False)
    if name == "oracle":
        return OraclePolicy(_need_profile(spec, profile), max_length)
    if name == "static":
        d = _arg(spec, float)
        if d < 0:
            raise ControlError(f"policy '{spec}': delay must be >= 0")
        return StaticPolicy(_need_profile(spec, profile), d, max_length)
    if name in ("ucb-specstop", "naive-ucb", "ucb-specstop-scaled", "naive-ucb-scaled"):
        beta = _arg(spec, float, 1.0)
        if beta < 0:
            raise ControlError(f"policy '{spec}': beta must be >= 0")
        return UcbSpecStop(max_length, beta=beta, naive=name.startswith("naive"), scaled=name.endswith("-scaled"))
    if name == "ucb-specstop-ctx":
        beta = _arg(spec, float, 1.0)
        if beta < 0:
            raise ControlError(f"policy '{spec}': beta must be >= 0")
        return ContextualUcbSpecStop(max_length, beta=beta)
    if name == "hf-heuristic":
        return HFHeuristicPolicy(max_length)
    if name == "hf-confidence":
        return ConfidencePolicy(_arg(spec, float, 0.4), max_length)
    if name == "specdec++":
        h = _arg(spec, float, DEFAULT_THRESHOLD)
        if not 0.0 <= h <= 1.0:
            raise ControlError(f"policy '{spec}': threshold H must be in [0, 1]")
        return SpecDecPolicy(h, max_length)
    if name == "specdec++-delay":
        if spec != name:
            raise ControlError(f"policy '{spec}': takes no argument (its threshold follows the delay)")
        return DelaySpecDecPolicy(_need_profile(spec, profile), max_length)
    raise ControlError(f"unknown policy '{spec}' (known: {', '.join(POLICY_SPECS)})")
