"""The policies an edge acts on, one per spec, shared by all its requests.

Local mode learns in-process. Remote mode only acts: `observe` runs in the
control subscriber, whose versioned snapshots arrive through `apply_update`;
until the first one arrives a spec acts on `fallback` (the theory's best
length from the pair's shipped profile, or a fixed length).

Updates are untrusted until checked: the snapshot must restore cleanly (every
count and length range-checked by the policy), and the version must move
forward by a plausible step. A version far ahead of the current one (or behind
it) is applied only when the controller's bucket holds exactly that version
(`needs_confirmation`), so a forged version can neither freeze a policy nor
roll it back. Specs are canonical (`make_policy(...).spec`) and the table is
bounded: the least recently used spec is dropped beyond `max_policies`.
"""
from __future__ import annotations

from collections import OrderedDict

from control import ControlError, Policy, Profile, make_policy
from nodes.protocol.calibration import MAX_CALIBRATION_ROUNDS


class PolicyBook:
    """`profile` serves the policies that need one (oracle, static:D, the delay-aware head rule)."""

    def __init__(self, max_length: int, seed: int, learn_locally: bool = True, fallback: Policy | None = None,
                 max_policies: int = 32, max_version_step: int = 1_000_000, profile: Profile | None = None,
                 pinned: str | None = None):
        self.max_length, self.seed, self.learn_locally, self.profile = max_length, seed, learn_locally, profile
        self.pinned: str | None = None  # the edge's default policy: never evicted by a flood of other specs
        self.fallback = fallback or make_policy(f"fixed:{min(4, max_length)}", max_length=max_length)
        self.max_policies, self.max_version_step = max_policies, max_version_step
        self.policies: OrderedDict[str, Policy] = OrderedDict()
        self.calibration: list[tuple[int, float]] = []  # start-up compute samples, for policies made later too
        self.versions: dict[str, int] = {}
        self.evicted = 0
        if pinned is not None:
            self.pinned = self.get(pinned).spec

    def canonical(self, spec: str) -> str:
        """The spec as the policy names itself; raises ControlError for a bad spec or length."""
        return self._make(spec).spec

    def get(self, spec: str) -> Policy:
        if spec in self.policies:
            self.policies.move_to_end(spec)
            return self.policies[spec]
        pol = self._make(spec)
        for length, ms in self.calibration:
            pol.calibrate(length, ms)
        self.policies[pol.spec] = pol
        self.versions.setdefault(pol.spec, 0)
        while len(self.policies) > self.max_policies:
            old = next(k for k in self.policies if k != self.pinned)
            del self.policies[old]
            self.versions.pop(old, None)
            self.evicted += 1
        return pol

    def calibrate(self, length: int, compute_ms: float) -> None:
        """A start-up calibration round's compute (nodes/protocol/calibration.py), learned locally: by
        every policy held now and every one made later (bounded: the sweep's rounds of every length)."""
        if len(self.calibration) < self.max_length * MAX_CALIBRATION_ROUNDS:
            self.calibration.append((length, compute_ms))
        for pol in self.policies.values():
            pol.calibrate(length, compute_ms)

    def acting(self, spec: str) -> tuple[Policy, int]:
        """The policy object to act on now, and the version it stands for."""
        pol = self.get(spec)
        version = self.versions.get(pol.spec, 0)
        if self.learn_locally or version > 0 or not pol.learns:
            return pol, version
        return self.fallback, 0

    def needs_confirmation(self, spec: str, version: int) -> bool:
        """True when `version` is not a plausible next version: apply it only if the bucket has it."""
        current = self.versions.get(spec, 0)
        return not current < version <= current + self.max_version_step

    def apply_update(self, spec: str, version: int, snapshot: dict, confirmed: bool = False) -> None:
        """Restore a controller snapshot; raises ControlError (and changes nothing) if refused."""
        spec = self.canonical(spec)
        current = self.versions.get(spec, 0)
        if version == current and spec in self.policies:
            raise ControlError(f"update version {version} is the one already applied")
        if self.needs_confirmation(spec, version) and not confirmed:
            raise ControlError(f"update version {version} is not a plausible successor of {current} "
                               f"(and the controller's bucket does not hold it)")
        fresh = self._make(spec)
        fresh.restore(snapshot)
        self.get(spec)
        self.policies[spec] = fresh
        self.versions[spec] = version

    def _make(self, spec: str) -> Policy:
        return make_policy(spec, max_length=self.max_length, seed=self.seed, profile=self.profile)
