"""The event-making stage: scored rows become anomaly events and health changes, tick by tick.

A row above the threshold is an anomaly event; a service whose health flips (anomalous or back to
normal) yields a health change, so dependency gating and verification always see a service's
latest word. An event names its contributing metrics: the features furthest (|z|) from the
service's recent normal, an exponentially weighted mean and variance of its normal rows
(``Attribution``). Policies match on those names, so shadow replay runs this same stage.

``Observations`` keeps what the engine last saw (each service's score, each series' value, with
the wall time seen): events carry the service's latest values, verification compares against them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from engine.records import AnomalyEvent
from engine.runtime.scoring import Scored

EWMA = 0.05
"""Weight of a new normal row in the per-service baseline."""
TOP = 3
"""How many features an event names."""

Observation = tuple[float, float]  # (value, wall time seen)


class Attribution:
    """Per-service EWMA baselines of normal rows; call it once per scored row, in time order."""

    def __init__(self, feature_names: list[str]) -> None:
        self.names = list(feature_names)
        self.base: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, service: str, x: np.ndarray, anomalous: bool) -> tuple[tuple[str, float], ...]:
        """The top features by |z| for an anomalous row (and no update); a normal row updates the baseline."""
        base = self.base.get(service)
        if base is None:
            self.base[service] = (x.copy(), np.zeros_like(x))
            return ()
        mean, var = base
        if anomalous:
            z = np.abs(x - mean) / np.sqrt(var + 1e-12)
            top = np.argsort(-z)[:TOP]
            return tuple((self.names[j], round(float(z[j]), 3)) for j in top if np.isfinite(z[j]))
        delta = x - mean
        self.base[service] = (mean + EWMA * delta, (1 - EWMA) * (var + EWMA * delta * delta))
        return ()


class Observations:
    """The latest score per service and value per series, each with the wall time it was seen.

    Written by the tick that scored them, read by verification (only observations made after an
    action count) and by event making (an event carries its service's latest values).
    """

    def __init__(self) -> None:
        self.scores: dict[str, Observation] = {}
        self.metrics: dict[tuple[str, str], Observation] = {}
        self.clock: dict[str, float] = {}  # service -> its latest row's time (a simulated platform's too)

    def saw(self, scored: Scored, now: float) -> None:
        metrics = self.metrics
        for key, value in scored.latest.items():
            metrics[key] = (value, now)
        scores, clock = self.scores, self.clock
        for row, score in zip(scored.rows, scored.scores.tolist(), strict=True):
            scores[row.service] = (score, now)
            clock[row.service] = row.ts

    def forget(self, services: Iterable[str]) -> None:
        """Drop what was seen of idle services (the engine's eviction, ``engine.runtime.intake``)."""
        gone = set(services)
        for service in gone:
            self.scores.pop(service, None)
            self.clock.pop(service, None)
        for key in [key for key in self.metrics if key[0] in gone]:
            del self.metrics[key]

    def values_of(self, service: str, names: list[str]) -> dict[str, float]:
        metrics = self.metrics
        return {m: metrics[(service, m)][0] for m in names if (service, m) in metrics}


@dataclass(frozen=True)
class TickEvents:
    """What one tick told the policies: health changes and anomalies, in row order."""

    changes: list[AnomalyEvent]
    events: list[AnomalyEvent]
    emitted: float  # perf_counter when they were made (for latency)


class EventMaker:
    """Scored rows to events, in order, one tick at a time (one owner: ticks must not interleave)."""

    def __init__(
        self,
        *,
        detector: str,
        threshold: float,
        feature_names: list[str],
        bundle_version: str,
        detector_version: str,
    ) -> None:
        self.detector = detector
        self.threshold = float(threshold)
        self.bundle_version = bundle_version
        self.detector_version = detector_version
        self.metric_names = list(dict.fromkeys(f.split("__", 1)[0] for f in feature_names))
        self.attribution = Attribution(feature_names)
        self.health: dict[str, bool] = {}  # True: the service's last row was anomalous

    def forget(self, services: Iterable[str]) -> None:
        """Drop idle services' baselines and normal health (an anomalous one keeps its health:
        its recovery must still be told when it comes back)."""
        for service in services:
            self.attribution.base.pop(service, None)
            if not self.health.get(service):
                self.health.pop(service, None)

    def step(self, scored: Scored, observations: Observations) -> TickEvents:
        """Events for a scored tick; ``observations`` gives each service's latest metric values."""
        if not scored.rows:
            return TickEvents([], [], time.perf_counter())
        X = np.asarray([r.values for r in scored.rows], dtype=np.float64)
        threshold = self.threshold
        health = self.health
        events: list[AnomalyEvent] = []
        changes: list[AnomalyEvent] = []
        alarms = scored.alarms.tolist()
        for i, (row, score) in enumerate(zip(scored.rows, scored.scores.tolist(), strict=True)):
            anomalous = alarms[i]
            service = row.service
            features = self.attribution(service, X[i], anomalous)
            was = health.get(service, False)
            if not anomalous and not was:
                continue
            event = AnomalyEvent(
                service=service,
                detector=self.detector,
                detector_version=self.detector_version,
                bundle_version=self.bundle_version,
                score=score,
                threshold=threshold,
                anomalous=anomalous,
                contributing=tuple(dict.fromkeys(f.split("__", 1)[0] for f, _ in features)),
                features=features,
                window_start=float(row.window_start),
                window_end=float(row.window_end),
                ts=float(row.ts),
                arrival=scored.arrivals[i],
                metrics=observations.values_of(service, self.metric_names) if anomalous else {},
            )
            if anomalous:
                events.append(event)
            if was != anomalous:
                health[service] = anomalous
                changes.append(event)
        return TickEvents(changes, events, time.perf_counter())
