"""Pure control logic (numpy only): theory, online draft-length policies, simulator."""
from control.policies import DEFAULT_MAX_LENGTH, POLICY_SPECS, SNAPSHOT_FORMAT, TARGET_ONLY, Policy, make_policy
from control.profile import Profile, load_profile, parametric_profile, profile_from_dict
from control.types import ControlError, RoundContext, RoundOutcome

__all__ = ["make_policy", "Policy", "RoundContext", "RoundOutcome", "ControlError", "Profile",
           "load_profile", "profile_from_dict", "parametric_profile", "POLICY_SPECS", "DEFAULT_MAX_LENGTH", "TARGET_ONLY",
           "SNAPSHOT_FORMAT"]
