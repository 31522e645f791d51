"""Diagnosis cost per engine tick: the stage's step over one minute row of every service of the
simulated platform during a feature-store outage (four anomaly events a tick to diagnose), and
over the engine benchmark's shape (34 services of 6 metrics, six one-minute rows of each a tick,
a burst on one service every 40 minutes).

The figure is both halves of a tick's diagnosis: the ``Signer`` (signatures, the forest on the
rows that stand out; in the engine it runs with scoring, in the workers) and ``DiagnosisStage.step``
(the window, the root and victims of each event, in the engine's event thread); the baseline is the
signatures alone (``Baselines.signatures`` on the same rows), so the ratio is what classifying and
localising add to keeping the baselines.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
from harness import Row

from engine.diagnosis import DiagnosisStage, Signer, shipped_model
from engine.diagnosis.signature import METRICS, Baselines
from engine.records import AnomalyEvent
from engine.runtime.events import TickEvents
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


Latest = dict[tuple[str, str], float]


def _diagnose(
    signer: Signer, stage: DiagnosisStage, scored: Scored, tick: TickEvents, latest: Latest
) -> None:
    """One tick's diagnosis, as the engine runs it: the signer with scoring, then the stage."""
    signer.saw(latest)
    scored.signs = signer.sign_rows(scored.rows)
    stage.step(scored, tick)


def _ticks() -> tuple[PlatformModel, list[tuple[Scored, TickEvents, Latest]]]:
    model = PlatformModel(load_config(), seed=5)
    start = T0 + HEALTHY_MIN * 60
    t = np.arange(T0, start + FAULT_MIN * 60, 60.0)
    values = model.values(
        t, [Fault("dependency_outage", "feature-store", start, magnitude=0.8)], np.random.default_rng(5)
    )
    out = []
    for i, ts in enumerate(t.tolist()):
        latest = {(s, m): float(v[i]) for s in model.services for m, v in values[s].items()}
        rows = [_Row(s, ts) for s in model.services]
        events = (
            [AnomalyEvent(service=s, detector="bench", score=0.99, ts=ts) for s in VICTIMS]
            if ts >= start
            else []
        )
        out.append((Scored(rows=rows), TickEvents([], events, 0.0), latest))
    return model, out


def bench_diagnosis_tick(repeats: int) -> list[Row]:
    model, ticks = _ticks()
    fault_ticks = FAULT_MIN
    figure, baseline = [], []
    for _ in range(repeats):
        signer, stage = Signer(shipped_model()), DiagnosisStage(shipped_model(), model.topology)
        for scored, tick, latest in ticks[:-fault_ticks]:
            _diagnose(signer, stage, scored, tick, latest)
        begin = time.perf_counter()
        for scored, tick, latest in ticks[-fault_ticks:]:
            _diagnose(signer, stage, scored, tick, latest)
        figure.append((time.perf_counter() - begin) / fault_ticks * 1e6)
        b = Baselines()

        def signatures(scored: Scored, latest: Latest, b: Baselines = b) -> None:
            services = [row.service for row in scored.rows]
            values = np.array([[latest.get((s, m), np.nan) for m in METRICS] for s in services])
            b.signatures(services, np.array([row.ts for row in scored.rows]), values)

        for scored, _, latest in ticks[:-fault_ticks]:
            signatures(scored, latest)
        begin = time.perf_counter()
        for scored, _, latest in ticks[-fault_ticks:]:
            signatures(scored, latest)
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


ENGINE_BASE = {
    "request_rate": 100.0, "latency_p50_ms": 50.0, "latency_p99_ms": 200.0,
    "error_rate": 0.01, "cpu_util": 0.5, "memory_util": 0.5,
}  # fmt: skip
ENGINE_SERVICES = [f"svc-{i:02d}" for i in range(34)]


def _engine_ticks(n: int, rows_per_tick: int = 6) -> list[tuple[Scored, TickEvents, Latest]]:
    """``bench_engine``'s stream, a tick at a time: each row reads its service's latest values."""
    rng = np.random.default_rng(1)
    t, out = T0, []
    for _ in range(n):
        latest: Latest = {}
        rows, events = [], []
        for _ in range(rows_per_tick):
            bucket = int(t // 60)
            victim = ENGINE_SERVICES[(bucket // 40) % 34] if bucket % 40 < 3 else None
            for s in ENGINE_SERVICES:
                factor = 3.0 if s == victim else 1.0
                for m, base in ENGINE_BASE.items():
                    latest[(s, m)] = base * factor * (1 + rng.normal() * 0.03)
                rows.append(_Row(s, t))
            if victim:
                events.append(AnomalyEvent(service=victim, detector="bench", score=0.99, ts=t))
            t += 60
        out.append((Scored(rows=rows), TickEvents([], events, 0.0), latest))
    return out


def bench_diagnosis_engine_shape(repeats: int) -> list[Row]:
    ticks = _engine_ticks(400)
    figure = []
    for _ in range(repeats):
        signer = Signer(shipped_model())
        stage = DiagnosisStage(shipped_model(), {s: () for s in ENGINE_SERVICES})
        for scored, tick, latest in ticks[:100]:  # past the baselines' warm-up
            _diagnose(signer, stage, scored, tick, latest)
        begin = time.perf_counter()
        for scored, tick, latest in ticks[100:]:
            _diagnose(signer, stage, scored, tick, latest)
        figure.append((time.perf_counter() - begin) / 300 * 1e3)
    return [
        Row(
            figure="diagnosis per engine tick (34 services x 6 rows, bench_engine's stream)",
            unit="ms/tick",
            samples=figure,
            higher_is_better=False,
            note="300 ticks/run after 100; run it with PYTHONPATH=<another build> to compare",
        )
    ]


BENCHMARKS = [bench_diagnosis_tick, bench_diagnosis_engine_shape]
