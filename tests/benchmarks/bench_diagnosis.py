"""Diagnosis cost per engine tick: the stage's step over one minute row of every service of the
simulated platform during a feature-store outage (four anomaly events a tick to diagnose).

The figure is ``DiagnosisStage.step`` (signatures, the tree on anomalous rows, the window, the
root and victims of each event); the baseline is the signatures alone (``Baselines.signature`` on
the same rows), so the ratio is what classifying and localising add to keeping the baselines.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
from harness import Row

from engine.diagnosis import DiagnosisStage, shipped_model
from engine.diagnosis.signature import METRICS, Baselines
from engine.records import AnomalyEvent
from engine.runtime.events import Observations, TickEvents
from engine.runtime.scoring import Scored
from engine.simulation.config import load_config
from engine.simulation.faults import Fault
from engine.simulation.model import PlatformModel

T0 = 1_768_300_000.0
HEALTHY_MIN = 120
FAULT_MIN = 60
VICTIMS = ("feature-store", "inference-a", "inference-b", "gateway")


class _Row(NamedTuple):
    service: str
    ts: float


def _ticks() -> tuple[PlatformModel, list[tuple[Scored, TickEvents, Observations]]]:
    model = PlatformModel(load_config(), seed=5)
    start = T0 + HEALTHY_MIN * 60
    t = np.arange(T0, start + FAULT_MIN * 60, 60.0)
    values = model.values(
        t, [Fault("dependency_outage", "feature-store", start, magnitude=0.8)], np.random.default_rng(5)
    )
    out = []
    for i, ts in enumerate(t.tolist()):
        obs = Observations()
        for service in model.services:
            for metric, v in values[service].items():
                obs.metrics[(service, metric)] = (float(v[i]), 0.0)
        rows = [_Row(s, ts) for s in model.services]
        events = (
            [AnomalyEvent(service=s, detector="bench", score=0.99, ts=ts) for s in VICTIMS]
            if ts >= start
            else []
        )
        out.append((Scored(rows=rows), TickEvents([], events, 0.0), obs))
    return model, out


def bench_diagnosis_tick(repeats: int) -> list[Row]:
    model, ticks = _ticks()
    fault_ticks = FAULT_MIN
    figure, baseline = [], []
    for _ in range(repeats):
        stage = DiagnosisStage(shipped_model(), model.topology)
        for scored, tick, obs in ticks[:-fault_ticks]:
            stage.step(scored, tick, obs)
        begin = time.perf_counter()
        for scored, tick, obs in ticks[-fault_ticks:]:
            stage.step(scored, tick, obs)
        figure.append((time.perf_counter() - begin) / fault_ticks * 1e6)
        b = Baselines()

        def signatures(scored: Scored, obs: Observations, b: Baselines = b) -> None:
            services = [row.service for row in scored.rows]
            b.signatures(services, np.array([row.ts for row in scored.rows]), obs.latest(services, METRICS))

        for scored, _, obs in ticks[:-fault_ticks]:
            signatures(scored, obs)
        begin = time.perf_counter()
        for scored, _, obs in ticks[-fault_ticks:]:
            signatures(scored, obs)
        baseline.append((time.perf_counter() - begin) / fault_ticks * 1e6)
    return [
        Row(
            figure="diagnosis per engine tick (6 services, 4 anomaly events, outage)",
            unit="µs/tick",
            samples=figure,
            baseline="the signatures alone, same rows",
            baseline_samples=baseline,
            higher_is_better=False,
            note=f"{fault_ticks} ticks/run after {HEALTHY_MIN} healthy ones",
        )
    ]


BENCHMARKS = [bench_diagnosis_tick]
