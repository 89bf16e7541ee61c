"""Device emulation: the tokens are real, the clock is the device's.

On this CPU a bundled draft token costs ~0.5 ms and a verify ~3 ms, so the
best draft length is the maximum at every delay and no live run can show the
regime of a real edge device (the seed paper's Jetson: ~139 ms per round at
one drafted token, ~72 ms per further token). A device profile says how long
a device takes to draft (fixed + per drafted token) and to verify (fixed + per
verified position: L + 1 of them), with an optional relative jitter. After
each real draft or verify forward the worker waits until the emulated time
has passed since the round asked for the compute (waiting for this machine's
model thread included), exactly as the link emulation pads the network. The
wait is an asyncio sleep, so each request has a virtual device of its own
(its rounds are serial, other requests go on, and waiting for this CPU is
inside the device's time, not added to it). When the real compute already took
longer, nothing is added. A verify profile with `"shared": true` is instead one
device for all sessions, as a real cloud GPU is: its batches run one after
another, each holding the device for the emulated time of its longest row, so a
verifier has a capacity and queueing for it is real (how verifier scaling is
measured on a machine whose CPU is not the bottleneck a GPU would be). Prefill runs at this machine's speed (not emulated).
The stream tree (nodes/models/stream_tree.py) is paced the same way: each of its batched draft
forwards is one drafting step of the edge device, each target forward costs the cloud device's
fixed time plus its per-position time for the new nodes it feeds (`forward_ms`).

Profiles: `nodes/devices/<name>.json` (shipped, with their provenance) or any
JSON file with the same fields; a worker uses the half it needs.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

DEVICES_DIR = Path(__file__).resolve().parent / "devices"
FIELDS = ("draft_ms_fixed", "draft_ms_per_token", "verify_ms_fixed", "verify_ms_per_token", "jitter")


class DeviceError(ValueError):
    """A device profile that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    provenance: str = ""
    draft_ms_fixed: float | None = None
    draft_ms_per_token: float | None = None
    verify_ms_fixed: float | None = None
    verify_ms_per_token: float | None = None
    jitter: float = 0.0  # each emulated duration is scaled by 1 + jitter * U[-1, 1]
    shared: bool = False  # verify: one device for every session (batches serial), not one per session

    @property
    def emulates_draft(self) -> bool:
        return self.draft_ms_per_token is not None

    @property
    def emulates_verify(self) -> bool:
        return self.verify_ms_fixed is not None

    def draft_ms(self, length: int) -> float:
        """Emulated time to draft `length` tokens (0 for a target-only round)."""
        if not self.emulates_draft or length == 0:
            return 0.0
        return (self.draft_ms_fixed or 0.0) + self.draft_ms_per_token * length

    def verify_ms(self, length: int) -> float:
        """Emulated time of one verify forward over `length` drafts plus the bonus position."""
        return self.forward_ms(length + 1)

    def forward_ms(self, positions: int) -> float:
        """Emulated time of one target forward over `positions` new positions (a stream-tree verify
        feeds its new nodes, with no bonus position of its own)."""
        if not self.emulates_verify:
            return 0.0
        return self.verify_ms_fixed + (self.verify_ms_per_token or 0.0) * positions

    def to_dict(self) -> dict:
        return {"name": self.name, "provenance": self.provenance,
                **{f: getattr(self, f) for f in FIELDS if getattr(self, f) is not None},
                **({"shared": True} if self.shared else {})}


def shipped_devices() -> list[str]:
    return sorted(p.stem for p in DEVICES_DIR.glob("*.json"))


def load_device(name_or_path: str) -> DeviceProfile:
    """A shipped profile by name (`jetson-orin-nano`), or a JSON file by path."""
    path = Path(name_or_path)
    if not path.suffix and (DEVICES_DIR / f"{name_or_path}.json").exists():
        path = DEVICES_DIR / f"{name_or_path}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DeviceError(f"device profile '{name_or_path}' not found (shipped: {', '.join(shipped_devices())}; "
                          "or give a path to a JSON file)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeviceError(f"device profile {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DeviceError(f"device profile {path}: expected a JSON object")
    values = {}
    for f in FIELDS:
        v = data.get(f)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise DeviceError(f"device profile {path}: field '{f}' must be a number >= 0, got {v!r}")
        values[f] = float(v)
    if values.get("jitter", 0.0) >= 1.0:
        raise DeviceError(f"device profile {path}: field 'jitter' must be below 1")
    if ("draft_ms_fixed" in values) and ("draft_ms_per_token" not in values):
        raise DeviceError(f"device profile {path}: 'draft_ms_fixed' needs 'draft_ms_per_token'")
    if ("verify_ms_per_token" in values) and ("verify_ms_fixed" not in values):
        raise DeviceError(f"device profile {path}: 'verify_ms_per_token' needs 'verify_ms_fixed'")
    if not any(k in values for k in ("draft_ms_per_token", "verify_ms_fixed")):
        raise DeviceError(f"device profile {path}: needs 'draft_ms_per_token' (edge) or 'verify_ms_fixed' (cloud)")
    shared = data.get("shared", False)
    if not isinstance(shared, bool):
        raise DeviceError(f"device profile {path}: field 'shared' must be true or false, got {shared!r}")
    if shared and "verify_ms_fixed" not in values:
        raise DeviceError(f"device profile {path}: 'shared' needs verify times (it describes a cloud device)")
    name = data.get("name", path.stem)
    return DeviceProfile(str(name), str(data.get("provenance", "")), **values, shared=shared)


class Pacer:
    """One worker's emulated durations, with seeded jitter (a rerun sees the same clock)."""

    def __init__(self, profile: DeviceProfile, seed: int = 0):
        self.profile = profile
        self.rng = random.Random(f"device:{profile.name}:{seed}")

    def _jittered(self, ms: float) -> float:
        j = self.profile.jitter
        return ms * (1.0 + j * self.rng.uniform(-1.0, 1.0)) if j and ms else ms

    def draft(self, length: int, real_ms: float) -> tuple[float, float]:
        """(emulated ms, pad ms to wait) for a draft of `length` tokens that really took `real_ms`
        (queueing for the model thread included)."""
        if not self.profile.emulates_draft:
            return real_ms, 0.0
        target = self._jittered(self.profile.draft_ms(length))
        return max(target, real_ms), max(0.0, target - real_ms)

    def verify(self, length: int, real_ms: float) -> tuple[float, float]:
        return self.forward(length + 1, real_ms)

    def forward(self, positions: int, real_ms: float) -> tuple[float, float]:
        """(emulated ms, pad ms to wait) for a target forward over `positions` new positions."""
        if not self.profile.emulates_verify:
            return real_ms, 0.0
        target = self._jittered(self.profile.forward_ms(positions))
        return max(target, real_ms), max(0.0, target - real_ms)
