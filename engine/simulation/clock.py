"""Simulated time: the platform's clock, injectable so that a day of platform time fits in a minute.

Why a clock object rather than ``time.time()``: the simulated platform, the chaos runner and the
report all speak platform time (epoch seconds, UTC), while the engine they drive speaks wall time.
``ScaledClock`` ties the two with a constant factor (``speed`` platform seconds per wall second),
which is what lets the runner translate the durations of a policy (cooldown, approval TTL,
verification deadline) into the engine's wall seconds (see ``engine.chaos.timescale``).
``ManualClock`` only moves when told to, for unit tests of the platform that need no engine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

DAY_IN_A_MINUTE = 1440.0  # platform seconds per wall second: 24 h of platform time in 60 s


@runtime_checkable
class SimClock(Protocol):
    """Platform time (epoch seconds, UTC) and how fast it runs against the wall."""

    speed: float

    def now(self) -> float: ...

    def wall_seconds(self, platform_seconds: float) -> float:
        """How long ``platform_seconds`` of platform time take on the wall."""
        ...


class ScaledClock:
    """Platform time = ``start`` + ``speed`` x wall seconds since construction (or ``restart``)."""

    def __init__(
        self, start: float, speed: float = DAY_IN_A_MINUTE, wall: Callable[[], float] = time.monotonic
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = float(speed)
        self._wall = wall
        self._lock = threading.Lock()
        self._start = float(start)
        self._w0 = wall()

    def now(self) -> float:
        with self._lock:
            return self._start + self.speed * (self._wall() - self._w0)

    def restart(self, at: float) -> None:
        """Continue from platform time ``at`` (after a warm-up that ran faster than the clock)."""
        with self._lock:
            self._start = float(at)
            self._w0 = self._wall()

    def wall_seconds(self, platform_seconds: float) -> float:
        return platform_seconds / self.speed

    def sleep(self, platform_seconds: float) -> None:
        """Wait ``platform_seconds`` of platform time."""
        time.sleep(max(0.0, self.wall_seconds(platform_seconds)))


class ManualClock:
    """A clock that moves only through ``advance``/``set`` (speed is nominal, for conversions)."""

    def __init__(self, start: float, speed: float = 1.0) -> None:
        self.speed = float(speed)
        self._t = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._t += seconds
            return self._t

    def set(self, t: float) -> None:
        with self._lock:
            self._t = float(t)

    def wall_seconds(self, platform_seconds: float) -> float:
        return platform_seconds / self.speed
