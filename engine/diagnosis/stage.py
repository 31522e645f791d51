"""The diagnosis stage: between event making and the policies, it says what is wrong and where.

It runs in two halves, because one of them needs only a service's own rows and the other the whole
platform:

- ``Signer`` (where rows are scored: the scoring stage, in each scoring worker for its services):
  each scored row's service's latest values update that service's signature (``Baselines``), and
  the rows that stand out get their kind probabilities (``KindModel``). Its output travels with the
  tick's scores (``Scored.signs``). It used to run in the engine's event thread, where it was most
  of a decided tick's time between its events and the policies (2.7 ms p50 of ~6 at 50,000
  points/s; README, "Where the time goes").
- ``DiagnosisStage`` (the engine's event thread): ``step(scored, tick)`` holds those rows over
  ``WINDOW_S`` and returns the tick with a ``Diagnosis`` on each anomaly event: the kind of the
  event's root cause, the root (``localise.root_of``), this service's role, the root's victims
  and its evidence. Health changes pass unchanged.

Like every stage each is a plain object driven one tick at a time by one owner; the engine and
shadow replay both run them.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from engine.diagnosis.localise import WINDOW_S, is_fault, own_symptoms, root_of, upstream_closure
from engine.diagnosis.model import KindModel
from engine.diagnosis.signature import METRICS, QUIET_Z, RECENT_INDEX, Baselines, top_metrics
from engine.records import Diagnosis

Signs = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
"""The rows of a tick that stand out, by their index in the tick: (signature, recent means, kind
probabilities). Rows that do not stand out are not in it."""


class Signer:
    """The per-service half of the diagnosis (module docstring): one per place that scores rows,
    owning the baselines and latest values of the services scored there. Picklable: the engine
    sends one to each scoring worker."""

    def __init__(self, model: KindModel) -> None:
        self.model = model
        self.baselines = Baselines()
        self.values: dict[str, list[float]] = {}  # service -> its latest value of each of METRICS
        self._column = {m: j for j, m in enumerate(METRICS)}

    def saw(self, latest: Mapping[tuple[str, str], float]) -> None:
        """A tick's latest value of each series (``Scored.latest``), every tick, rows or none."""
        column, values = self._column, self.values
        for (service, metric), value in latest.items():
            j = column.get(metric)
            if j is not None:
                row = values.get(service)
                if row is None:
                    row = values[service] = [math.nan] * len(METRICS)
                row[j] = value

    def sign_rows(self, rows: Sequence[Any]) -> Signs:
        """``sign`` of scored rows (``service``, ``ts``), each read as its service's latest values
        (the tick's last, which ``saw`` was just given)."""
        services = [row.service for row in rows]
        nan = [math.nan] * len(METRICS)
        latest = {s: self.values.get(s, nan) for s in dict.fromkeys(services)}
        values = np.array([latest[s] for s in services], dtype=np.float64).reshape(
            len(services), len(METRICS)
        )
        return self.sign(services, [float(row.ts) for row in rows], values)

    def sign(self, services: Sequence[str], ts: Sequence[float], values: np.ndarray) -> Signs:
        """Rows (one per service and time; ``values``: ``METRICS`` columns, NaN where missing):
        their signatures, and the kind model once over the rows that stand out. Numpy over all the
        rows at once: a Python loop per row and metric was most of the engine's time between an
        anomaly and its decision."""
        z, recent = self.baselines.signatures(services, np.asarray(ts, dtype=np.float64), values)
        standing = np.flatnonzero(np.max(np.abs(z), axis=1, initial=0.0) >= QUIET_Z)
        if not len(standing):
            return {}
        proba = self.model.proba(z[standing], recent[standing])
        return {int(i): (z[i], recent[i], proba[k]) for k, i in enumerate(standing.tolist())}

    def forget(self, services: Iterable[str]) -> None:
        gone = list(services)
        self.baselines.forget(gone)
        for service in gone:
            self.values.pop(service, None)


class _Held:
    """One service's rows that stood out in the last window: (ts, signature, recent means, kind
    probabilities)."""

    def __init__(self) -> None:
        self.rows: deque[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = deque()

    def add(self, ts: float, z: np.ndarray, recent: np.ndarray, p: np.ndarray) -> None:
        self.rows.append((ts, z, recent, p))

    def trim(self, now: float) -> None:
        while self.rows and self.rows[0][0] < now - WINDOW_S:
            self.rows.popleft()


class DiagnosisStage:
    """The platform's half of the diagnosis (module docstring): the window of rows that stood out,
    kinds and roots."""

    def __init__(self, model: KindModel, topology: Mapping[str, Iterable[str]], *, version: str = "") -> None:
        self.model = model
        self.version = version
        self.upstreams = upstream_closure({s: tuple(d) for s, d in topology.items()})
        self.held: dict[str, _Held] = {}
        self._memo: tuple[float, dict[str, Any], dict[str, Any], dict[str, str]] | None = None
        """(now, anomalous services, their (kind, signature), roots): one picture per tick's moment."""

    def forget(self, services: Iterable[str]) -> None:
        for service in services:
            self.held.pop(service, None)

    def hold(self, services: Sequence[str], ts: Sequence[float], signs: Signs) -> None:
        """A tick's rows (their services and times, in order) and their ``Signer`` signs: each row
        that stands out is held for the window, and every row's service's window moves on."""
        self._memo = None  # new rows: the window's picture changes
        held = self.held
        for i, (service, t) in enumerate(zip(services, ts, strict=True)):
            rows = held.get(service)
            if rows is None:
                rows = held[service] = _Held()
            sign = signs.get(i)
            if sign is not None:
                rows.add(t, *sign)
            rows.trim(t)

    def step(self, scored: Any, tick: Any) -> Any:
        """The tick (``TickEvents``) with a diagnosis on each anomaly event; ``scored.signs`` are
        its rows' signs (``Signer``, run where they were scored)."""
        if scored.rows:
            self.hold(
                [row.service for row in scored.rows], [float(row.ts) for row in scored.rows], scored.signs
            )
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
