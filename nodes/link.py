"""Software emulation of the edge<->cloud link (tc netem is not available here).

Link emulation is something the edge does (it sits on the edge's side of every
exchange), so it lives with the edge under nodes/.

The edge asks for one sample per round and sleeps the uplink delay before
sending the draft and the downlink delay after the verdict arrives; asyncio
sleeps never block other requests; `LinkTimer` corrects for the event loop's
timer lateness so the time spent matches the sampled delay. Spec strings
(CLI --channel):

  const:D                 one-way D ms each direction
  jitter:D:J              D +- uniform J ms, drawn per direction per round
  markov:D1,D2,..[:STAY]  one state per delay; each round keeps the state with
                          probability STAY (default 0.9), else moves uniformly
                          to another; the state is observable (channel_state)
  markov-clock:D1,D2,..:SECONDS
                          one state per delay, each held for an exponential wall-clock
                          time of mean SECONDS, then a uniform jump to another: how a
                          real link changes (per-round `markov` is the paper's model)
  drift:D1,D2,..:SECONDS  piecewise constant in wall time, SECONDS per phase
  trace:FILE.csv          rows "seconds,delay_ms[,state]": piecewise constant from each row's time
"""
from __future__ import annotations

import asyncio
import csv
import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable


class LinkError(ValueError):
    """A channel spec or trace file that cannot be used; the message names what is wrong."""


@dataclass(frozen=True)
class ChannelSample:
    up_ms: float
    down_ms: float
    state: str | None = None

    @property
    def one_way_ms(self) -> float:
        return 0.5 * (self.up_ms + self.down_ms)


class Channel:
    spec = "const:0"

    def sample(self) -> ChannelSample:
        raise NotImplementedError


class ConstChannel(Channel):
    def __init__(self, delay_ms: float, jitter_ms: float = 0.0, seed: int = 0):
        self.delay, self.jitter = delay_ms, jitter_ms
        self.rng = random.Random(seed)
        self.spec = f"jitter:{delay_ms:g}:{jitter_ms:g}" if jitter_ms else f"const:{delay_ms:g}"
        self.lock = threading.Lock()

    def sample(self) -> ChannelSample:
        if not self.jitter:
            return ChannelSample(self.delay, self.delay)
        with self.lock:
            up, down = (max(0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter)) for _ in range(2))
        return ChannelSample(up, down)


class MarkovChannel(Channel):
    def __init__(self, delays_ms: list[float], stay: float = 0.9, seed: int = 0):
        self.delays, self.stay = delays_ms, stay
        self.rng = random.Random(seed)
        self.state = 0
        self.lock = threading.Lock()
        self.spec = f"markov:{','.join(f'{d:g}' for d in delays_ms)}:{stay:g}"

    def sample(self) -> ChannelSample:
        with self.lock:
            if len(self.delays) > 1 and self.rng.random() >= self.stay:
                self.state = self.rng.choice([s for s in range(len(self.delays)) if s != self.state])
            s = self.state
        return ChannelSample(self.delays[s], self.delays[s], str(s))


class MarkovClockChannel(Channel):
    """Markov states that change in wall-clock time (exponential dwell of mean `dwell_s`)."""

    def __init__(self, delays_ms: list[float], dwell_s: float, seed: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.delays, self.dwell_s, self.clock = delays_ms, dwell_s, clock
        self.rng = random.Random(seed)
        self.state = 0
        self.until: float | None = None
        self.lock = threading.Lock()
        self.spec = f"markov-clock:{','.join(f'{d:g}' for d in delays_ms)}:{dwell_s:g}"

    def sample(self) -> ChannelSample:
        now = self.clock()
        with self.lock:
            if self.until is None:
                self.until = now + self.rng.expovariate(1.0 / self.dwell_s)
            while now >= self.until:
                if len(self.delays) > 1:
                    self.state = self.rng.choice([s for s in range(len(self.delays)) if s != self.state])
                self.until += self.rng.expovariate(1.0 / self.dwell_s)
            s = self.state
        return ChannelSample(self.delays[s], self.delays[s], str(s))


class PiecewiseChannel(Channel):
    """Delay (and state) as a step function of seconds since the first sample."""

    def __init__(self, steps: list[tuple[float, float, str | None]], spec: str,
                 clock: Callable[[], float] = time.monotonic, cycle: bool = False):
        self.steps = sorted(steps)
        self.spec, self.clock, self.cycle = spec, clock, cycle
        self.t0: float | None = None

    def sample(self) -> ChannelSample:
        now = self.clock()
        if self.t0 is None:
            self.t0 = now
        t = now - self.t0
        if self.cycle and len(self.steps) > 1:
            period = self.steps[-1][0] + (self.steps[1][0] - self.steps[0][0])
            t %= period
        cur = self.steps[0]
        for step in self.steps:
            if step[0] <= t:
                cur = step
        return ChannelSample(cur[1], cur[1], cur[2])


class LinkTimer:
    """Sleeps one emulated direction, compensating for late timers.

    asyncio timers fire late: the selector rounds a timeout up to whole
    milliseconds and the VM wakes from idle slowly (0.1-0.6 ms), which would add
    to every emulated delay. The timer asks for `lead` ms less than the sampled
    delay and corrects `lead` by half of each sleep's error (an integral
    controller, per delay octave: 1-2 ms, 2-4 ms, ...). Because of the rounding a
    single sleep lands either a little late or a little early; the mean converges
    to the sampled delay within a handful of sleeps. What was actually spent is
    returned (the edge logs it as link_ms).
    """

    def __init__(self, gain: float = 0.5, max_lead_ms: float = 2.0):
        self.gain, self.max_lead_ms = gain, max_lead_ms
        self.lead_ms: dict[int, float] = {}

    async def sleep(self, ms: float) -> float:
        if ms <= 0:
            return 0.0
        octave = max(0, math.frexp(ms)[1])
        lead = self.lead_ms.get(octave, self._nearest_lead(octave))
        t0 = time.perf_counter()
        await asyncio.sleep(max(0.0, ms - lead) / 1e3)
        spent = (time.perf_counter() - t0) * 1e3
        self.correct(octave, lead, spent, ms)
        return spent

    def correct(self, octave: int, lead: float, spent: float, asked: float) -> None:
        """Integral step: move the octave's lead by `gain` x this sleep's error (clipped to 1 ms,
        so one stall does not swing the next sleeps)."""
        error = min(1.0, max(-1.0, spent - asked))
        self.lead_ms[octave] = round(min(self.max_lead_ms, max(0.0, lead + self.gain * error)), 9)

    def _nearest_lead(self, octave: int) -> float:
        """A new octave starts from its nearest measured neighbour (lateness varies slowly with delay)."""
        if not self.lead_ms:
            return 0.0
        return self.lead_ms[min(self.lead_ms, key=lambda o: abs(o - octave))]


def _floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LinkError(f"channel: {what} '{text}' is not a comma-separated list of numbers") from None
    if not vals or any(v < 0 for v in vals):
        raise LinkError(f"channel: {what} must be numbers >= 0")
    return vals


def parse_channel(spec: str, seed: int = 0, clock: Callable[[], float] = time.monotonic) -> Channel:
    kind, _, rest = (spec or "").strip().partition(":")
    parts = rest.split(":") if rest else []
    try:
        if kind in ("none", "") and not parts:
            return ConstChannel(0.0)
        if kind == "const" and len(parts) == 1:
            return ConstChannel(_floats(parts[0], "delay")[0])
        if kind == "jitter" and len(parts) == 2:
            return ConstChannel(_floats(parts[0], "delay")[0], _floats(parts[1], "jitter")[0], seed)
        if kind == "markov" and len(parts) in (1, 2):
            stay = float(parts[1]) if len(parts) == 2 else 0.9
            if not 0 <= stay <= 1:
                raise LinkError("channel: markov stay probability must be in [0, 1]")
            return MarkovChannel(_floats(parts[0], "delays"), stay, seed)
        if kind == "markov-clock" and len(parts) == 2:
            dwell = float(parts[1])
            if not dwell > 0 or math.isinf(dwell):
                raise LinkError("channel: markov-clock dwell must be > 0 seconds")
            return MarkovClockChannel(_floats(parts[0], "delays"), dwell, seed, clock)
        if kind == "drift" and len(parts) == 2:
            delays, period = _floats(parts[0], "delays"), float(parts[1])
            if period <= 0:
                raise LinkError("channel: drift phase length must be > 0 seconds")
            return PiecewiseChannel([(i * period, d, str(i)) for i, d in enumerate(delays)], spec, clock)
        if kind == "trace" and len(parts) == 1:
            return PiecewiseChannel(_read_trace(parts[0]), spec, clock)
    except LinkError:
        raise
    except ValueError:
        raise LinkError(f"channel: bad number in '{spec}'") from None
    raise LinkError(f"channel: cannot parse '{spec}' (use const:D, jitter:D:J, markov:D1,D2[:STAY], "
                        "markov-clock:D1,D2:SECONDS, drift:D1,D2:SECONDS or trace:FILE.csv)")


def _read_trace(path: str) -> list[tuple[float, float, str | None]]:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    except OSError as exc:
        raise LinkError(f"channel: cannot read trace '{path}' ({exc.strerror})") from None
    steps = []
    for i, r in enumerate(rows):
        if i == 0 and not _is_number(r[0]):
            continue  # header
        if len(r) < 2 or not _is_number(r[0]) or not _is_number(r[1]) or float(r[1]) < 0 or float(r[0]) < 0:
            raise LinkError(f"channel: trace '{path}' row {i + 1} must be 'seconds,delay_ms[,state]'")
        steps.append((float(r[0]), float(r[1]), r[2].strip() if len(r) > 2 and r[2].strip() else None))
    if not steps:
        raise LinkError(f"channel: trace '{path}' has no rows")
    return steps


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
