"""The engine's door: what parsed points must pass before they are queued, and where refusals go.

Why here and not in the scoring stage: everything the engine keeps per series (online feature
state, the latest value of each metric, score, health, attribution baselines; ~1.3 KiB a series)
is created by the first point of a series. Hostile or buggy senders inventing names (100,000
service names cost ~235 MiB, never freed) must be stopped where points come in:

- **Names**: ``NameRules`` from the settings (``max_name_length``, ``name_pattern``); the parser
  (``engine.telemetry.points``) applies them, so a bad name is refused with its line and field.
- **Series cap**: at most ``max_series`` distinct ``(service, metric)`` series are held; a point of
  a new series beyond it is refused (field ``service``, code ``series_limit``; 400 over HTTP with
  the series named), counted in ``selfheal_series_refused_total``, and the known series go on.
- **Idle eviction**: a series not seen for ``series_idle_s`` is forgotten, freeing its place;
  ``idle_services()`` hands the services left with no series to the scoring side, which drops
  their state (``Engine._forget``). A forgotten service that comes back starts afresh (warm-up).
- **Dead letter**: refused points go to an NDJSON file, each raw input cut to
  ``dead_letter_raw_bytes``, the file rotated past ``dead_letter_max_bytes``
  (``dead-letter.ndjson.1`` … ``.N``, ``dead_letter_files`` kept), so refusals cannot fill a disk.

``Door`` puts these together for the sources: HTTP pushes are offered (a full queue answers 429),
file tails, scrapes and the Redis bus wait while the queue is full.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter as Tally
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge

from engine.runtime.config import EngineSettings
from engine.runtime.metrics import EngineMetrics
from engine.runtime.sources import IngestQueue, Sink
from engine.telemetry.columns import PointColumns
from engine.telemetry.points import NameRules, Point, Points, Rejection

SWEEP_MAX_S = 60.0  # idle series are looked for at least this often (and 4 times per idle period)


class Intake:
    """Name rules and the series cap of one engine; thread-safe (HTTP, file tails and scrapes)."""

    def __init__(self, settings: EngineSettings, registry: CollectorRegistry) -> None:
        self.names = NameRules(settings.max_name_length, settings.name_pattern)
        self.max_series = settings.max_series
        self.idle_s = settings.series_idle_s
        self._seen: dict[tuple[str, str], float] = {}  # series -> last seen (monotonic)
        self._series_of: dict[str, int] = {}  # service -> how many of its series are held
        self._lock = threading.Lock()
        self._sweep_every = min(SWEEP_MAX_S, self.idle_s / 4)
        self._next_sweep = time.monotonic() + self._sweep_every
        Gauge("selfheal_series", "Distinct (service, metric) series held", registry=registry).set_function(
            lambda: len(self._seen)
        )
        self.refused = Counter(
            "selfheal_series_refused",
            "Points refused because their series was new and max_series series were held",
            registry=registry,
        )
        self.evicted = Counter(
            "selfheal_series_evicted",
            "Series forgotten after series_idle_s without a point",
            registry=registry,
        )

    @property
    def series(self) -> int:
        return len(self._seen)

    def admit(self, points: Points) -> tuple[Points, list[Rejection]]:
        """The points whose series is known or fits under the cap, and one rejection per refused
        series (``count`` = its points in this batch)."""
        if not points:
            return points, []
        keys = points.series() if isinstance(points, PointColumns) else {(p[1], p[2]) for p in points}
        now = time.monotonic()
        refused: list[tuple[str, str]] = []
        with self._lock:
            seen = self._seen
            for key in keys:
                if key in seen:
                    seen[key] = now
                elif len(seen) < self.max_series:
                    seen[key] = now
                    self._series_of[key[0]] = self._series_of.get(key[0], 0) + 1
                else:
                    refused.append(key)
        if not refused:
            return points, []
        if isinstance(points, PointColumns):
            kept, counts = points.without(refused)
        else:
            gone = set(refused)
            kept = [p for p in points if (p[1], p[2]) not in gone]
            counts = Tally((p[1], p[2]) for p in points if (p[1], p[2]) in gone)
        rejections = [
            Rejection(
                -1,
                "service",
                "series_limit",
                f"{service!r}/{metric!r} is a new series and the engine holds max_series="
                f"{self.max_series:,} series: {counts[(service, metric)]} point(s) refused "
                f"(raise max_series, or wait: series idle for series_idle_s={self.idle_s:g} s are forgotten)",
                {"service": service, "metric": metric},
                "series",
                counts[(service, metric)],
            )
            for service, metric in refused
        ]
        self.refused.inc(sum(counts.values()))
        return kept, rejections

    def idle_services(self, now: float | None = None) -> list[str]:
        """Forget the series idle for ``series_idle_s``; the services left with none (their state
        is the scoring side's to drop). Cheap between sweeps: call it every tick."""
        now = time.monotonic() if now is None else now
        if now < self._next_sweep:
            return []
        self._next_sweep = now + self._sweep_every
        horizon = now - self.idle_s
        gone: list[str] = []
        with self._lock:
            idle = [key for key, last in self._seen.items() if last < horizon]
            for key in idle:
                del self._seen[key]
                left = self._series_of[key[0]] - 1
                if left:
                    self._series_of[key[0]] = left
                else:
                    del self._series_of[key[0]]
                    gone.append(key[0])
        if idle:
            self.evicted.inc(len(idle))
        return gone


class DeadLetter:
    """Append-only NDJSON file of rejected points, so nobody has to reproduce a bad payload from
    logs; each raw input is cut to ``raw_bytes`` and the file rotated past ``max_bytes``."""

    def __init__(self, path: Path, *, max_bytes: int, files: int, raw_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.files = files
        self.raw_bytes = raw_bytes
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._size = path.stat().st_size if path.exists() else 0

    @classmethod
    def from_settings(cls, path: Path, settings: EngineSettings) -> DeadLetter:
        return cls(
            path,
            max_bytes=settings.dead_letter_max_bytes,
            files=settings.dead_letter_files,
            raw_bytes=settings.dead_letter_raw_bytes,
        )

    def write(self, source: str, rejections: Sequence[Rejection]) -> None:
        if not rejections:
            return
        now = time.time()
        text = "".join(
            json.dumps(
                {
                    "received": now,
                    "source": source,
                    "where": r.where,
                    "field": r.field,
                    "code": r.code,
                    "reason": r.reason[: self.raw_bytes],
                    **self._raw(r.raw),
                },
                default=str,
            )
            + "\n"
            for r in rejections
        ).encode("utf-8")
        with self._lock:
            if self._size and self._size + len(text) > self.max_bytes:
                self._rotate()
            with open(self.path, "ab") as fh:
                fh.write(text)
            self._size += len(text)

    def _raw(self, raw: Any) -> dict[str, Any]:
        """``raw`` as it came when its JSON is short enough, else that JSON cut, and its length."""
        encoded = raw if isinstance(raw, str) else json.dumps(raw, default=str)
        if len(encoded) <= self.raw_bytes:
            return {"raw": raw}
        return {"raw": encoded[: self.raw_bytes], "raw_truncated": len(encoded)}

    def _rotate(self) -> None:
        """``file`` -> ``file.1`` -> ``file.2`` …; the oldest beyond ``files`` is deleted."""
        oldest = self.path.with_name(f"{self.path.name}.{self.files}")
        oldest.unlink(missing_ok=True)
        for k in range(self.files - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{k}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{k + 1}"))
        if self.path.exists():
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        self._size = 0


class Accepted(NamedTuple):
    """What a push got queued: how many points, and every point refused."""

    points: int
    rejections: list[Rejection]


class Door:
    """Where the sources hand their parsed points: the intake's rules, then the bounded queue;
    what was queued is counted, what was refused counted and dead-lettered."""

    def __init__(
        self,
        intake: Intake,
        queue: IngestQueue,
        dead_letter: DeadLetter,
        metrics: EngineMetrics,
        *,
        stop: threading.Event,
    ) -> None:
        self.intake, self.queue, self.dead_letter, self.metrics = intake, queue, dead_letter, metrics
        self._stop = stop  # set when the engine stops its sources: waiting sinks give up

    def offer(self, points: Points, rejections: Sequence[Rejection], source: str) -> Accepted | None:
        """A push: None when the queue is full (nothing was accepted: answer 429), else what was
        accepted and every rejection."""
        admitted, refused = self.intake.admit(points)
        if not self.queue.offer(admitted, arrival=time.perf_counter()):
            self.metrics.requests_throttled.inc()
            return None
        return self.took(source, admitted, [*rejections, *refused])

    def sink(self, source: str) -> Sink:
        """What file tails, scrapes and the bus hand their points to: waits while the queue is full."""

        def sink(points: list[Point], rejections: list[Rejection]) -> bool:
            admitted, refused = self.intake.admit(points)
            queued = self.queue.put(admitted, stop=self._stop)  # False: the engine stops
            self.took(source, admitted if queued else [], [*rejections, *refused])
            return queued

        return sink

    def took(self, source: str, admitted: Points, rejected: list[Rejection]) -> Accepted:
        """Count what a source got queued, count and dead-letter what it had refused."""
        if admitted:
            self.metrics.points_in.labels(source).inc(len(admitted))
        for r in rejected:
            self.metrics.points_rejected.labels(source, r.field).inc(r.count)
        self.dead_letter.write(source, rejected)
        return Accepted(len(admitted), rejected)


def failed_tick(batches: Sequence[tuple[float, Points]], exc: Exception) -> list[Rejection]:
    """The points of a scoring tick that failed before they were counted, as rejections
    (``selfheal_points_rejected_total{source="scoring", field="tick"}``); the engine dead-letters
    them and then counts them as done.

    Why: the bus acknowledges an entry once ``points_scored`` passes its position in the queue;
    uncounted, a failed tick's points made every later acknowledgement wait for as many more
    points (the newest entries stayed pending while traffic paused, and a partition's handover
    with them), and the failed tick's own entries were acknowledged with nothing on file.
    Dead-lettered, they are on file, counted, and their entries acknowledged.
    """
    reason = f"the scoring tick failed: {type(exc).__name__}: {exc}"
    return [
        Rejection(
            i, "tick", "scoring_failed", reason, {"ts": t, "service": sv, "metric": m, "value": v}, "point"
        )
        for i, (t, sv, m, v) in enumerate(p for _, batch in batches for p in batch)
    ]
