from control.policies.base import SNAPSHOT_FORMAT, Policy
from control.policies.registry import DEFAULT_MAX_LENGTH, POLICY_SPECS, TARGET_ONLY, make_policy

__all__ = ["Policy", "make_policy", "POLICY_SPECS", "DEFAULT_MAX_LENGTH", "SNAPSHOT_FORMAT", "TARGET_ONLY"]
