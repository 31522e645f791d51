"""The scoring stage: a tick's points in, feature rows and their scores out, one micro-batch.

One stage for every place that scores a live stream: the engine (in its own process or in each
scoring worker, ``engine.runtime.shards``) and shadow replay (``engine.chaos.replay``), so the
three cannot drift.

The detector seam is ``StreamScorer`` (``engine.detectors.stream.StreamDetector``): ``feed`` turns
points into closed feature rows, ``score_rows`` scores a micro-batch of them with the stateful
post-processing. The detector is fixed; everything it remembers per series lives in the stage's
``states`` (``SeriesState``: explicit and serialisable with ``StreamDetector.state_to_bytes``; its
``names`` are the series' features, which place its rows in the union layout).

With a ``signer`` (``RowSigner``: the diagnosis' per-service half, ``engine.diagnosis.Signer``)
the stage also signs the rows it scored (``Scored.signs``): in the scoring workers, off the
engine's event thread. A signer that fails costs its tick the signs (``on_error("diagnosis")``:
the diagnosis goes on the rows its window held before), not its scores.

Rows leave the stage in the detector's union layout (``feature_names``: each row's role features in
their columns, NaN elsewhere), so events name contributing metrics alike for every service.

Hostile input costs only itself: a row whose features are not finite (a value that overflowed a
z-score) is refused alone at ``push`` with the features at fault, and a row the model cannot score
is refused alone by the detector (neither changes its series' state); the rest of the tick is
scored. Refused rows go to the dead letter with their reason.

Given a ``StateStore`` (``engine.runtime.states``) the stage starts from the states it holds and
writes the states its ticks changed every ``snapshot_s`` seconds (0: after every tick, before the
tick's scores leave the stage) and at ``close``: a restarted engine scores on as if it had never
stopped. A snapshot the store cannot take (its database away) costs no telemetry: the tick's scores
leave all the same, the states stay marked for the next snapshot, and the failure is logged once
(``engine.runtime.lograte``) and counted (``on_error("states")``). ``ScoreLog`` appends every
scored row to a file (the engine's ``scores_file``).

Replicas (``engine.runtime.bus``) hand services over while the stage runs: ``adopt`` reads the
states of the services a replica just took from the shared store, ``release`` saves and drops
those it hands back. Both run on the bus's thread, so the stage serialises them with ``step``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from engine.features import FeatureRow
from engine.runtime.lograte import Repeating

if TYPE_CHECKING:
    from engine.runtime.states import StateStore

log = logging.getLogger(__name__)

Batch = tuple[
    float, Any
]  # (perf_counter of arrival, points: list of (ts, service, metric, value) or columns)


@runtime_checkable
class StreamScorer(Protocol):
    """The detector as the scoring stage calls it (``engine.detectors.stream.StreamDetector``).

    ``threshold_`` separates anomalous scores (strictly above) from normal ones; ``detector`` names
    it in events and the journal; ``feature_names`` is the union layout of every role's features.
    """

    detector: str
    threshold_: float

    @property
    def feature_names(self) -> list[str]: ...
    @property
    def interval_s(self) -> float: ...
    def feed(self, points: Iterable[Any], states: MutableMapping[str, Any]) -> list[tuple[Any, Any]]: ...
    def close(self, states: MutableMapping[str, Any]) -> list[tuple[Any, Any]]: ...
    def score_rows(self, closed: list[tuple[Any, Any]]) -> list[Any]: ...


@dataclass(frozen=True)
class Refused:
    """A feature row the stage could not score: its service and time, and why (for the dead letter)."""

    service: str
    ts: float
    reason: str
    values: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.service, "ts": self.ts, "reason": self.reason, "values": list(self.values)}


@dataclass
class Scored:
    """One tick through the stage: the scored rows in push order, with their scores and arrivals."""

    rows: list[Any] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    alarms: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))
    """Which rows the detector calls anomalous: its score above the threshold, or its sustained
    alarm (``engine.detectors.stream_config.SustainedConfig``), so not ``scores > threshold``."""
    arrivals: list[float] = field(default_factory=list)
    points: int = 0
    latest: dict[tuple[str, str], float] = field(default_factory=dict)  # last value of each series
    refused: list[Refused] = field(default_factory=list)
    seconds: float = 0.0  # spent in the detector
    signs: dict[int, Any] = field(default_factory=dict)
    """The diagnosis' signs of the rows that stand out, by row index (``RowSigner``)."""


class RowSigner(Protocol):
    """The per-service half of the diagnosis (``engine.diagnosis.stage.Signer``): it runs where the
    rows are scored, as it needs only their services' own values."""

    def saw(self, latest: dict[tuple[str, str], float]) -> None: ...
    def sign_rows(self, rows: Sequence[Any]) -> dict[int, Any]: ...
    def forget(self, services: Iterable[str]) -> None: ...


class ScoringStage:
    """The detector and its per-series states; ``step`` scores one tick. One scoring thread; a
    lock serialises it with the replicas' handovers (``adopt``, ``release``)."""

    def __init__(
        self,
        detector: StreamScorer,
        states: MutableMapping[str, Any] | None = None,
        *,
        store: StateStore | None = None,
        snapshot_s: float = 60.0,
        on_error: Callable[[str], None] = lambda stage: None,
        signer: RowSigner | None = None,
    ) -> None:
        self.detector = detector
        self.signer = signer
        self._on_error = on_error
        self._snapshots = Repeating(log, "writing the detector states")
        self._signing = Repeating(log, "the diagnosis' signatures")
        self.states: MutableMapping[str, Any] = states if states is not None else {}
        self.store = store
        self._snapshot_s = snapshot_s
        self._dirty: set[str] = set()  # services whose state changed since the last snapshot
        self._saved_at = time.monotonic()
        self._lock = threading.RLock()  # uncontended but for a handover: ~50 ns a tick
        if store is not None:
            self.states.update(store.load())
        self._index = {name: j for j, name in enumerate(detector.feature_names)}
        self._columns: dict[tuple[str, ...], list[int]] = {}  # a series' features -> union columns
        self._closed: dict[int, tuple[Any, Any]] = {}  # id(union row) -> (state, row) pushed, not scored
        self._refused: list[Refused] = []

    def push(self, ts: float, service: str, metric: str, value: float) -> list[FeatureRow]:
        """Feed one point; the rows of the buckets it closed, in the union layout (not scored yet)."""
        closed = self.detector.feed(((ts, service, metric, value),), self.states)
        return self._accept(closed) if closed else []

    def flush(self) -> list[FeatureRow]:
        """Close every open bucket now (end of a replayed stream)."""
        return self._accept(self.detector.close(self.states))

    def step(self, batches: Sequence[Batch]) -> Scored:
        """Push a tick's points in order, then score every feature row they closed as one batch."""
        with self._lock:
            return self._step(batches)

    def adopt(self, services: Callable[[str], bool]) -> int:
        """Take over the services ``services`` picks: their states from the store (how many)."""
        if self.store is None:
            return 0
        with self._lock:
            states = self.store.load(services)
            self.states.update(states)
            return len(states)

    def release(self, services: Callable[[str], bool], *, save: bool) -> int:
        """Hand back the services ``services`` picks: their states saved first (``save``; not when
        the lease was lost, someone else may own them now), then dropped here (how many)."""
        with self._lock:
            gone = [name for name in self.states if services(name)]
            if save and self.store is not None:
                self.store.save(self.states, [name for name in self._dirty if services(name)])
            for name in gone:
                del self.states[name]
            self._dirty.difference_update([name for name in self._dirty if services(name)])
            return len(gone)

    def _step(self, batches: Sequence[Batch]) -> Scored:
        push = self.push
        rows: list[Any] = []
        arrivals: list[float] = []
        latest: dict[tuple[str, str], float] = {}
        n = 0
        for arrival, points in batches:
            n += len(points)
            for ts, service, metric, value in points:
                latest[(service, metric)] = value
                closed = push(ts, service, metric, value)
                if closed:
                    rows.extend(closed)
                    arrivals.extend([arrival] * len(closed))
        out = self.score(rows, arrivals, points=n, latest=latest)
        if self.store is not None:
            self._dirty.update(service for service, _ in latest)
            if time.monotonic() - self._saved_at >= self._snapshot_s:
                self._snapshot()
        return out

    def _snapshot(self) -> None:
        try:
            self.save()
        except Exception:
            self._snapshots.failed(
                "writing the detector states failed (scoring goes on; the next tick retries)"
            )
            self._on_error("states")
        else:
            self._snapshots.worked()

    def save(self) -> None:
        """Write the states changed since the last snapshot to the store (if any)."""
        with self._lock:
            if self.store is not None and self._dirty:
                self.store.save(self.states, self._dirty)
                self._dirty.clear()
            self._saved_at = time.monotonic()

    def close(self) -> None:
        """A last snapshot, then the store is closed (the engine's clean stop)."""
        if self.store is not None:
            with self._lock:
                self.save()
                self.store.close()

    def forget(self, services: Iterable[str]) -> None:
        """Drop the detector state of idle services (the engine's eviction, ``engine.runtime.intake``);
        a service that comes back starts afresh, with its warm-up."""
        with self._lock:
            for service in services:
                self.states.pop(service, None)
                if self.store is not None:
                    self._dirty.add(service)  # the next snapshot deletes it
            if self.signer is not None:
                self.signer.forget(services)

    def score(
        self,
        rows: list[Any],
        arrivals: list[float],
        *,
        points: int = 0,
        latest: dict[tuple[str, str], float] | None = None,
    ) -> Scored:
        """Score rows ``push``/``flush`` returned, in push order, as one micro-batch; with a
        signer, the scored rows' signs too."""
        out = Scored(points=points, latest=latest or {}, refused=self._refused)
        self._refused = []
        if self.signer is not None:
            self.signer.saw(out.latest)
        if not rows:
            return out
        self._score(out, rows, arrivals)
        if self.signer is not None and out.rows:
            try:
                out.signs = self.signer.sign_rows(out.rows)
                self._signing.worked()
            except Exception:  # the tick's scores leave all the same
                self._signing.failed("the diagnosis' signatures failed (scoring goes on)")
                self._on_error("diagnosis")
        return out

    def _score(self, out: Scored, rows: list[Any], arrivals: list[float]) -> None:
        started = time.perf_counter()
        closed = [self._closed.pop(id(row)) for row in rows]
        scored = self.detector.score_rows(closed)
        out.seconds = time.perf_counter() - started
        if all(s is not None for s in scored):
            out.rows, out.scores, out.arrivals = rows, np.array([s.score for s in scored]), arrivals
            out.alarms = np.array([s.anomalous for s in scored], dtype=bool)
            return
        keep = [i for i, s in enumerate(scored) if s is not None]
        for i, s in enumerate(scored):
            if s is None:
                row = closed[i][1]
                out.refused.append(_refused(row, "the detector could not score the row"))
                log.warning("%s at %s: the detector could not score the row", row.service, row.ts)
        out.rows = [rows[i] for i in keep]
        out.scores = np.array([scored[i].score for i in keep], dtype=np.float64)
        out.alarms = np.array([scored[i].anomalous for i in keep], dtype=bool)
        out.arrivals = [arrivals[i] for i in keep]

    def _accept(self, closed: list[tuple[Any, Any]]) -> list[FeatureRow]:
        out = []
        width = len(self._index)
        for state, row in closed:
            values = row.values
            names = state.names  # the series' own features (an adaptive role's differ by series)
            if not all(math.isfinite(v) for v in values):
                state.refused += 1
                bad = [n for n, v in zip(names, values, strict=False) if not math.isfinite(v)]
                self._refused.append(_refused(row, f"non-finite feature value(s): {', '.join(bad)}"))
                continue
            columns = self._columns.get(names)
            if columns is None:
                columns = self._columns[names] = [self._index.get(n, -1) for n in names]
            union = [math.nan] * width
            for j, v in zip(columns, values, strict=False):
                if j >= 0:
                    union[j] = v
            row_out = FeatureRow(row.ts, row.service, tuple(union), row.window_start, row.window_end)
            self._closed[id(row_out)] = (state, row)
            out.append(row_out)
        return out


class ScoreLog:
    """Every scored row appended to a file as a JSON line (``ts``, ``service``, ``score``): what the
    detector said, row by row, to audit it or to compare two runs (flushed every tick)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def write(self, scored: Scored) -> None:
        dumps = json.dumps
        self._file.write(
            "".join(
                dumps({"ts": row.ts, "service": row.service, "score": score}) + "\n"
                for row, score in zip(scored.rows, scored.scores.tolist(), strict=True)
            )
        )
        self._file.flush()

    def close(self) -> None:
        """Close the file; rows it could not write (a full disk) are logged, not raised: the
        engine's stop goes on (their ticks were dead-lettered when their writes failed)."""
        try:
            self._file.close()
        except OSError as exc:
            log.error("the score log %s could not be closed: %s", self.path, exc)


def _refused(row: Any, reason: str) -> Refused:
    return Refused(str(row.service), float(row.ts), reason, tuple(float(v) for v in row.values))
