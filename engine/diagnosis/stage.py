"""The diagnosis stage: between event making and the policies, it says what is wrong and where.

``step(scored, tick)`` reads every scored row's service's latest values (the engine's
``Observations``), updates that service's signature (``Baselines``) and its kind probabilities
(``KindModel``), holds both over ``WINDOW_S``, and returns the tick with a ``Diagnosis`` on each
anomaly event: the kind of the event's root cause, the root (``localise.root_of``), this service's
role, the root's victims and its evidence. Health changes pass unchanged. Like every stage it is a
plain object driven one tick at a time by one owner; the engine and shadow replay both run it.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from engine.diagnosis.localise import WINDOW_S, is_fault, own_symptoms, root_of, upstream_closure
from engine.diagnosis.model import KindModel
from engine.diagnosis.signature import METRICS, QUIET_Z, RECENT_INDEX, Baselines, top_metrics
from engine.records import Diagnosis


class LatestValues(Protocol):
    """What the stage reads of the engine's observations (``engine.runtime.events.Observations``)."""

    def latest(self, services: Sequence[str], names: Sequence[str]) -> np.ndarray:
        """Each service's latest value of each name (a row per service; NaN where none)."""
        ...


class _Held:
    """One service's anomalous rows of the last window: (ts, signature, recent means, kind
    probabilities)."""

    def __init__(self) -> None:
        self.rows: deque[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = deque()

    def add(self, ts: float, z: np.ndarray, recent: np.ndarray, p: np.ndarray) -> None:
        self.rows.append((ts, z, recent, p))

    def trim(self, now: float) -> None:
        while self.rows and self.rows[0][0] < now - WINDOW_S:
            self.rows.popleft()


class DiagnosisStage:
    """Signatures, kinds and roots for a stream of scored ticks (module docstring)."""

    def __init__(self, model: KindModel, topology: Mapping[str, Iterable[str]], *, version: str = "") -> None:
        self.model = model
        self.version = version
        self.upstreams = upstream_closure({s: tuple(d) for s, d in topology.items()})
        self.baselines = Baselines()
        self.held: dict[str, _Held] = {}
        self._memo: tuple[float, dict[str, Any], dict[str, Any], dict[str, str]] | None = None
        """(now, anomalous services, their (kind, signature), roots): one picture per tick's moment."""

    def forget(self, services: Iterable[str]) -> None:
        gone = list(services)
        self.baselines.forget(gone)
        for service in gone:
            self.held.pop(service, None)

    def observe(self, services: Sequence[str], ts: Sequence[float], values: np.ndarray) -> None:
        """Rows (one per service and time; ``values``: ``METRICS`` columns, NaN where missing):
        their signatures, each held for the window if it stands out. Numpy over all the rows at
        once, and the kind model once over the rows that stand out: a Python loop per row and
        metric was most of the engine's time between an anomaly and its decision."""
        times = np.asarray(ts, dtype=np.float64)
        z, recent = self.baselines.signatures(services, times, values)
        standing = np.max(np.abs(z), axis=1, initial=0.0) >= QUIET_Z
        proba = iter(self.model.proba(z[standing], recent[standing]) if standing.any() else ())
        held = self.held
        for i, (service, t) in enumerate(zip(services, times.tolist(), strict=True)):
            rows = held.get(service)
            if rows is None:
                rows = held[service] = _Held()
            if standing[i]:
                rows.add(t, z[i], recent[i], next(proba))
            rows.trim(t)

    def step(self, scored: Any, tick: Any, observations: LatestValues) -> Any:
        """The tick (``TickEvents``) with a diagnosis on each anomaly event."""
        self._memo = None  # new rows: the window's picture changes
        if scored.rows:
            services = [row.service for row in scored.rows]
            at = {service: i for i, service in enumerate(dict.fromkeys(services))}
            latest = observations.latest(list(at), METRICS)  # every row reads its service's latest
            self.observe(services, [float(row.ts) for row in scored.rows], latest[[at[s] for s in services]])
        if not tick.events:
            return tick
        events = [e.model_copy(update={"diagnosis": self.diagnose(e.service, e.moment)}) for e in tick.events]
        return dataclasses.replace(tick, events=events)

    def diagnose(self, service: str, now: float) -> Diagnosis:
        """The diagnosis of ``service``'s anomaly as of ``now`` (its root's kind, its role)."""
        if self._memo is None or self._memo[0] != now:
            anomalous = self._anomalous(now)
            self._memo = (now, anomalous, {s: (kind, z) for s, (kind, _, z, _) in anomalous.items()}, {})
        _, anomalous, seen, roots = self._memo
        if not roots:
            roots.update({s: root_of(s, seen, self.upstreams) for s in anomalous})
        root = roots[service] if service in roots else root_of(service, seen, self.upstreams)
        victims = tuple(sorted(s for s, r in roots.items() if r == root and s != root))
        if root in anomalous:
            kind, probability, z, since = anomalous[root]
            evidence = top_metrics(z)
        else:  # the detector saw it, the signature did not (yet): nothing to read a kind from
            kind, probability, evidence, since = "unknown", 1.0, (), now
        return Diagnosis(
            kind=kind,  # type: ignore[arg-type]
            probability=round(probability, 4),
            root=root,
            role="root" if root == service else "victim",
            victims=victims,
            evidence=evidence,
            window_start=since,
            window_end=now,
            model_version=self.version,
        )

    def _anomalous(self, now: float) -> dict[str, tuple[str, float, np.ndarray, float]]:
        """Services with a row standing out in the window: (kind, probability, latest signature, since).

        A service that is a root of its own while a faulty upstream spreads to it is read on its own
        symptoms (``own_symptoms``): the rest is its upstream's doing."""
        out: dict[str, tuple[str, float, np.ndarray, float]] = {}
        for service, held in self.held.items():
            held.trim(now)
            if held.rows:
                p = np.mean([r[3] for r in held.rows], axis=0)
                best = int(np.argmax(p))
                out[service] = (self.model.classes[best], float(p[best]), held.rows[-1][1], held.rows[0][0])
        first = {s: (kind, z) for s, (kind, _, z, _) in out.items()}
        for service in out:
            if root_of(service, first, self.upstreams) != service:
                continue
            ups = self.upstreams.get(service, {})
            if any(u in first and is_fault(first[u][0], first[u][1]) for u in ups):
                held = self.held[service]
                out[service] = self._kind(
                    held, lambda z, s=service: own_symptoms(s, z, first, self.upstreams)
                )
        return out

    def _kind(
        self, held: _Held, view: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[str, float, np.ndarray, float]:
        """The kind of ``held``'s rows read through ``view`` (a signature without some metrics);
        a recent mean of a metric the view drops is dropped too (0, as the view's z)."""
        own = np.array([view(z) for _, z, _, _ in held.rows])
        whole = np.array([z for _, z, _, _ in held.rows])
        dropped = (own[:, RECENT_INDEX] == 0) & (whole[:, RECENT_INDEX] != 0)
        recent = np.where(dropped, 0.0, np.array([r for _, _, r, _ in held.rows]))
        p = self.model.proba(own, recent).mean(axis=0)
        best = int(np.argmax(p))
        return self.model.classes[best], float(p[best]), held.rows[-1][1], held.rows[0][0]
