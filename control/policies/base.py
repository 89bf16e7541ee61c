"""The policy interface: `choose` and `should_stop` act, `observe` learns.

Acting and learning may live in different processes: `snapshot()` returns a
msgpack-able dict of everything `choose`/`should_stop` depend on, and a policy
restored from it chooses exactly as the original would.
"""
from __future__ import annotations

from typing import Any

from control.types import ControlError, RoundContext, RoundOutcome

SNAPSHOT_FORMAT = 1


class Policy:
    spec: str = ""
    learns: bool = True  # False: observe() is a no-op, so nobody needs to send it outcomes
    # What should_stop reads after each drafted token: None = it never stops early (the draft passes no
    # stop rule at all: no softmax, no hidden states); "confidence" = the draft's probability of the
    # token; "acceptance" = the acceptance head's predicted probability that the target keeps it.
    stop_signal: str | None = None
    # True: the policy also acts without its stop signal (a drafter without an acceptance head serves it
    # with fixed lengths; RoundContext.stops tells it which); False: a drafter without it refuses the policy.
    stop_optional: bool = False

    def __init__(self, max_length: int):
        if max_length < 1:
            raise ControlError(f"max_length must be >= 1, got {max_length}")
        self.max_length = int(max_length)

    def choose(self, ctx: RoundContext) -> int:
        raise NotImplementedError

    def observe(self, outcome: RoundOutcome) -> None:
        """Default: nothing to learn."""

    def calibrate(self, length: int, compute_ms: float) -> None:
        """A round's compute timed before serving (a start-up calibration round of `length` tokens):
        compute does not depend on the traffic, acceptance does, so only the compute is learned.
        Default: nothing to learn (only a policy that models C(L) uses it)."""

    def should_stop(self, ctx: RoundContext, position: int, confidence: float) -> bool:
        """Called after each drafted token (1-based position) but the last, only when `ctx.stops` (the
        drafter has the signal `stop_signal` names); `confidence` is that signal's value for the token.
        Default: never stops early."""
        return False

    # --- persistence -------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def snapshot(self) -> dict[str, Any]:
        return {"format": SNAPSHOT_FORMAT, "spec": self.spec, "max_length": self.max_length, "state": self.state()}

    def restore(self, snapshot: dict[str, Any]) -> None:
        if not isinstance(snapshot, dict):
            raise ControlError("snapshot: expected a dict")
        fmt = snapshot.get("format")
        if not isinstance(fmt, int) or fmt > SNAPSHOT_FORMAT or fmt < 1:
            raise ControlError(f"snapshot: unsupported format {fmt!r} (this build reads format <= {SNAPSHOT_FORMAT})")
        if snapshot.get("spec") != self.spec:
            raise ControlError(f"snapshot: is for policy {snapshot.get('spec')!r}, not {self.spec!r}")
        if snapshot.get("max_length") != self.max_length:
            raise ControlError(f"snapshot: max_length {snapshot.get('max_length')!r} != {self.max_length}")
        state = snapshot.get("state")
        if not isinstance(state, dict):
            raise ControlError("snapshot: field 'state' must be a dict")
        try:
            self.load_state(state)
        except ControlError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, IndexError) as exc:
            raise ControlError(f"snapshot: malformed state ({type(exc).__name__}: {str(exc)[:100]})") from None

    def clamp(self, length: int) -> int:
        return max(1, min(self.max_length, int(length)))
