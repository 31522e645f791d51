"""The diagnosis' baselines in arrays give, bit for bit, what they gave per row and metric.

``ScalarBaselines`` below is the implementation the engine ran before ``Baselines`` computed a
tick's rows with numpy (kept here as the reference, constants read from the module), with the
recent means of latency (``RECENT``) written per row the same way. The signer and stage
over the platform model's telemetry, with every fault kind, several rows of a service in one tick,
missing and non-finite values, gaps and forgotten services, must hold the same signatures and
kind probabilities and say the same diagnoses as the stage over the reference; random streams
(Hypothesis) check the baselines alone, the freeze of a long fault included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.diagnosis import DiagnosisStage, Signer, shipped_model
from engine.diagnosis import signature as sig
from engine.diagnosis.signature import METRICS, Baselines
from engine.diagnosis.stage import Signs
from engine.simulation.config import load_config
from engine.simulation.faults import Fault
from engine.simulation.model import PlatformModel

T0 = 1_768_300_000.0


@dataclass
class _Series:
    level: float
    trend: float
    var: float
    first: float
    last: float
    trended: bool = True

    def expected(self, ts: float) -> float:
        return self.level + self.trend * min(max(ts - self.last, 0.0), sig.HORIZON_S)


@dataclass
class ScalarBaselines:
    """The per-row, per-metric baselines (the reference)."""

    series: dict[tuple[str, str], _Series] = field(default_factory=dict)
    away: dict[str, float] = field(default_factory=dict)
    recent: dict[str, tuple[list[float], float]] = field(default_factory=dict)  # means, last time

    def signature(
        self, service: str, ts: float, values: Mapping[str, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        z = self._z(service, ts, values)
        return z, np.array(self._remember(service, ts, z))

    def _remember(self, service: str, ts: float, z: np.ndarray) -> list[float]:
        means, last = self.recent.get(service, ([0.0] * len(sig.RECENT), math.nan))
        weight = 1.0 if math.isnan(last) else 1.0 - math.exp(-max(ts - last, 0.0) / sig.RECENT_TAU_S)
        means = [
            m + weight * (float(z[METRICS.index(name)]) - m)
            for m, name in zip(means, sig.RECENT, strict=True)
        ]
        self.recent[service] = (means, ts)
        return means

    def _z(self, service: str, ts: float, values: Mapping[str, float]) -> np.ndarray:
        z = np.zeros(len(METRICS))
        seen: list[tuple[_Series, float]] = []
        for j, metric in enumerate(METRICS):
            x = values.get(metric)
            if x is None or not math.isfinite(x):
                continue
            s = self.series.get((service, metric))
            if s is None:
                trended = metric not in sig.NO_TREND
                self.series[(service, metric)] = _Series(float(x), 0.0, 0.0, ts, ts, trended)
                continue
            seen.append((s, float(x)))
            if ts - s.first >= sig.WARMUP_S:
                expected = s.expected(ts)
                floor = max(sig.REL_FLOOR * abs(expected), sig.ABS_FLOOR.get(metric, 0.0))
                spread = math.sqrt(s.var + floor * floor) or sig.REL_FLOOR * abs(x)  # it raised on 0
                z[j] = (x - expected) / spread if spread else 0.0
        if sig.strength(z) < sig.QUIET_Z:
            self.away.pop(service, None)
        else:
            since = self.away.setdefault(service, ts)
            if ts - since < sig.MAX_FREEZE_S:
                return z
        for s, x in seen:
            dt = max(ts - s.last, 0.0)
            age = max(ts - s.first, dt, 1e-9)
            alpha = max(1.0 - math.exp(-dt / (sig.TAU_S if s.trended else sig.SLOW_TAU_S)), dt / age)
            beta = 1.0 - math.exp(-dt / sig.TREND_TAU_S)
            expected = s.expected(ts)
            error = x - expected
            level = expected + alpha * error
            if s.trended and dt > 0 and age > sig.WARMUP_S:
                s.trend = (1.0 - beta) * s.trend + beta * (level - s.level) / dt
            s.level = level
            s.var = (1.0 - alpha) * (s.var + alpha * error * error)
            s.last = ts
        return z

    def forget(self, services: Sequence[str]) -> None:
        gone = set(services)
        for key in [k for k in self.series if k[0] in gone]:
            del self.series[key]
        for service in gone:
            self.away.pop(service, None)
            self.recent.pop(service, None)


class ReferenceSigner(Signer):
    """The signer as it was before: one row at a time, the model on each row that stands out."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.baselines = ScalarBaselines()  # type: ignore[assignment]

    def sign(self, services: Sequence[str], ts: Sequence[float], values: np.ndarray) -> Signs:
        out: Signs = {}
        for i, (service, t, row) in enumerate(zip(services, ts, values, strict=True)):
            z, recent = self.baselines.signature(
                service, float(t), dict(zip(METRICS, row.tolist(), strict=True))
            )
            if sig.strength(z) >= sig.QUIET_Z:
                out[i] = (z, recent, self.model.proba(z, recent)[0])
        return out


def _same_held(a: DiagnosisStage, b: DiagnosisStage) -> None:
    assert a.held.keys() == b.held.keys()
    for service, held in a.held.items():
        other = b.held[service].rows
        assert len(held.rows) == len(other), service
        for (t1, z1, r1, p1), (t2, z2, r2, p2) in zip(held.rows, other, strict=True):
            assert t1 == t2 and z1.tobytes() == z2.tobytes() and p1.tobytes() == p2.tobytes(), service
            assert r1.tobytes() == r2.tobytes(), service


def _platform(seed: int) -> tuple[PlatformModel, np.ndarray, dict[str, dict[str, np.ndarray]]]:
    model = PlatformModel(load_config(), seed=seed)
    start = T0 + 2 * 3600
    faults = [
        Fault("dependency_outage", "feature-store", start, start + 1200, magnitude=0.8),
        Fault("stale_index", "vector-db", start + 1800, magnitude=0.6, ramp_s=900),
        Fault("memory_leak", "inference-b", start + 2400, magnitude=1.0, ramp_s=1200, recovery_s=120),
        Fault("bad_deploy", "inference-a", start + 5400, start + 6600, magnitude=0.6),
        Fault("latency_creep", "gateway", start + 7200, magnitude=3.0, ramp_s=1800),
    ]
    t = np.arange(T0, start + 4 * 3600 + 5 * 3600, 60.0)  # past MAX_FREEZE_S of the stale index
    return model, t, model.values(t, faults, np.random.default_rng(seed))


def test_the_stage_in_arrays_holds_and_says_what_the_per_row_stage_did() -> None:
    model, t, values = _platform(seed=7)
    rng = np.random.default_rng(7)
    services = list(model.services)
    new, ref = (DiagnosisStage(shipped_model(), model.topology) for _ in range(2))
    signers = {id(new): Signer(shipped_model()), id(ref): ReferenceSigner(shipped_model())}
    per_tick = 3  # three minutes a tick: a service's rows learn from each other in one batch
    diagnosed = 0
    for k in range(0, len(t), per_tick):
        rows = [(s, i) for i in range(k, min(k + per_tick, len(t))) for s in services]
        x = np.array([[values[s].get(m, np.full(len(t), np.nan))[i] for m in METRICS] for s, i in rows])
        x[rng.random(x.shape) < 0.03] = np.nan  # a metric missing now and then
        x[rng.random(x.shape) < 0.002] = np.inf
        ts = [float(t[i]) for _, i in rows]
        if rng.random() < 0.05:  # a gap: the tick arrives late
            ts = [v + 30.0 for v in ts]
        names = [s for s, _ in rows]
        for stage in (new, ref):
            stage.hold(names, ts, signers[id(stage)].sign(names, ts, x))
        if k == 200:  # an idle service is forgotten, and comes back
            for stage in (new, ref):
                stage.forget(["inference-b"])
                signers[id(stage)].forget(["inference-b"])
        _same_held(new, ref)
        for service in services:
            a, b = new.diagnose(service, ts[-1]), ref.diagnose(service, ts[-1])
            assert a == b, (service, ts[-1])
            diagnosed += a.kind != "unknown"
    assert diagnosed > 100  # the faults were diagnosed, not only quiet rows compared


def test_the_signer_reads_each_service_latest_values_of_a_tick() -> None:
    """Every row of a tick reads its service's latest values (the tick's last, or an earlier
    tick's for a series this one did not bring), as the engine's observations did."""
    model, t, values = _platform(seed=11)
    services = list(model.services)
    new, ref = (DiagnosisStage(shipped_model(), model.topology) for _ in range(2))
    signer, reference = Signer(shipped_model()), ReferenceSigner(shipped_model())
    from engine.runtime.events import TickEvents
    from engine.runtime.scoring import Scored

    class Row:
        def __init__(self, service: str, ts: float) -> None:
            self.service, self.ts = service, ts

    seen: dict[tuple[str, str], float] = {}
    for k in range(0, 400, 2):
        latest = {
            (s, m): float(v[k + 1])
            for s in services
            for m, v in values[s].items()
            if (k // 2) % 7 or m != "latency_p50_ms"  # a series missing from a tick now and then
        }
        seen.update(latest)
        rows = [Row(s, float(t[i])) for i in (k, k + 1) for s in services]
        signer.saw(latest)
        new.step(Scored(rows=rows, signs=signer.sign_rows(rows)), TickEvents([], [], 0.0))
        x = np.array([[seen.get((s, m), math.nan) for m in METRICS] for s in services])
        ref.hold(
            [r.service for r in rows],
            [r.ts for r in rows],
            reference.sign([r.service for r in rows], [r.ts for r in rows], np.vstack([x, x])),
        )
    _same_held(new, ref)
    assert sum(len(h.rows) for h in new.held.values()) > 0  # rows stood out: the test compares them


_rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from([0.0, 0.0, 30.0, 60.0, 60.0, 61.5, 600.0, 4 * 3600.0]),  # the step forward
        st.lists(
            st.one_of(
                st.floats(0.0, 2.0),
                st.floats(50.0, 5000.0),
                st.just(math.nan),
                st.just(math.inf),
            ),
            min_size=len(METRICS),
            max_size=len(METRICS),
        ),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=60, deadline=None)
@given(rows=_rows, batch=st.integers(1, 7))
def test_random_streams_give_the_same_signatures_and_state(rows: list[Any], batch: int) -> None:
    new, ref = Baselines(), ScalarBaselines()
    clock: dict[str, float] = {}
    stream = []
    for service, step, vals in rows:
        clock[service] = clock.get(service, T0) + step
        stream.append((service, clock[service], vals))
    for k in range(0, len(stream), batch):
        chunk = stream[k : k + batch]
        got, got_recent = new.signatures(
            [s for s, _, _ in chunk], np.array([t for _, t, _ in chunk]), np.array([v for _, _, v in chunk])
        )
        want = [ref.signature(s, t, dict(zip(METRICS, v, strict=True))) for s, t, v in chunk]
        assert got.tobytes() == np.array([z for z, _ in want]).reshape(got.shape).tobytes()
        assert got_recent.tobytes() == np.array([r for _, r in want]).reshape(got_recent.shape).tobytes()
    for (service, metric), s in ref.series.items():
        b = new.baseline(service, metric)
        assert b is not None
        assert b == {"level": s.level, "trend": s.trend, "var": s.var, "first": s.first, "last": s.last}
