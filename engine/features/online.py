"""Online features: one point at a time, bounded memory per series, rows as buckets close.

Policy (the batch execution reproduces it exactly on the accepted points):

* **Buckets.** A point at ``ts`` belongs to bucket ``floor(ts / interval)``, i.e. the epoch-aligned
  interval ``[k*interval, (k+1)*interval)``; a row is labelled with its bucket's start.
* **Watermark and lateness.** Per service, the watermark is the largest ts seen (for a metric of the
  spec) minus ``lateness``. A bucket closes once the watermark reaches its end, or at ``flush()``.
  Points may arrive in any order while their bucket is open; a point whose bucket has closed is
  *late*: it is dropped and counted in ``late_points``.
* **Rows.** When a bucket closes, each metric that has points in it gets one aggregated value,
  appended to that metric's history (windows count buckets that exist, so gaps are skipped, not
  filled). A row for (service, bucket) is emitted only when it is complete: every metric of the
  spec has a value in that bucket and enough history for every feature (warm-up = the metric's
  largest span). Otherwise nothing is emitted for that bucket, but histories still advance.
* **Ignored points.** Metrics not in the spec are ignored (``ignored_points``) and do not move the
  watermark; non-finite values or timestamps are dropped (``invalid_points``).

Memory per service: the histories (at most the metric's span each), one sorted copy per quantile
window, and the open buckets (at most ``lateness / interval + 2``). Not thread-safe: one owner.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from engine.features.definitions import OnlineKernel, aggregate_online, clamp, online_kernel, slide_sorted
from engine.features.spec import FeatureSpec, Quantile

logger = logging.getLogger(__name__)

_NEVER = -(2**62)  # "no bucket closed yet"


class FeatureRow(NamedTuple):
    """One complete feature row: bucket label, service, values in spec order, input time range."""

    ts: float
    service: str
    values: tuple[float, ...]
    window_start: float
    window_end: float


@dataclass(slots=True)
class _MetricPlan:
    index: int
    aggregation: str
    span: int
    quantile_windows: tuple[int, ...]
    kernels: tuple[OnlineKernel, ...]
    single_is_value: bool  # one point in the bucket -> its value (every aggregation but count/last)


class _ServiceState:
    __slots__ = ("closed_through", "history", "history_buckets", "max_ts", "open", "sorted_windows")

    def __init__(self, plans: tuple[_MetricPlan, ...]) -> None:
        self.open: dict[int, list] = {}
        self.closed_through = _NEVER
        self.max_ts = float("-inf")
        self.history: list[list[float]] = [[] for _ in plans]
        self.history_buckets: list[list[int]] = [[] for _ in plans]
        self.sorted_windows: list[list[list[float]]] = [[[] for _ in p.quantile_windows] for p in plans]


class OnlineFeatures:
    """Push points, get the rows whose bucket closed; equal to ``batch_features`` on the same points."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._interval = spec.interval
        self._lateness = spec.lateness
        self._metric_index = {name: i for i, name in enumerate(spec.metrics)}
        plans = []
        for i, (name, mspec) in enumerate(spec.metrics.items()):
            qwins: list[int] = []
            kernels: list[OnlineKernel] = []
            for t in mspec.transforms:
                slot = -1
                if isinstance(t, Quantile):
                    if t.window not in qwins:
                        qwins.append(t.window)
                    slot = qwins.index(t.window)
                kernels.append(online_kernel(t, slot))
            agg = spec.aggregation_of(name)
            plans.append(
                _MetricPlan(i, agg, mspec.span, tuple(qwins), tuple(kernels), agg not in ("count", "last"))
            )
        self._plans = tuple(plans)
        self._keeps_ts = tuple(p.aggregation == "last" for p in plans)
        self._series: dict[str, _ServiceState] = {}
        self.accepted_points = 0
        self.late_points = 0
        self.ignored_points = 0
        self.invalid_points = 0
        self.rows_emitted = 0

    # ------------------------------------------------------------------------------ public API

    def push(self, ts: float, service: str, metric: str, value: float) -> list[FeatureRow]:
        """Add one point; return the rows of buckets this point closed (oldest first)."""
        mi = self._metric_index.get(metric)
        if mi is None:
            self.ignored_points += 1
            return []
        if not (value - value == 0.0 and ts - ts == 0.0):  # NaN or inf in either
            self.invalid_points += 1
            return []
        st = self._series.get(service)
        if st is None:
            st = self._series[service] = _ServiceState(self._plans)
        b = int(ts // self._interval)
        if b <= st.closed_through:
            self.late_points += 1
            return []
        cells = st.open.get(b)
        if cells is None:
            cells = st.open[b] = [None] * len(self._plans)
        item = (ts, value) if self._keeps_ts[mi] else value
        cell = cells[mi]
        if cell is None:
            cells[mi] = [item]
        else:
            cell.append(item)
        self.accepted_points += 1
        if ts > st.max_ts:
            st.max_ts = ts
            upto = int((ts - self._lateness) // self._interval) - 1
            if upto > st.closed_through:
                return self._close(service, st, upto)
        return []

    def push_many(
        self,
        ts: Sequence[float] | np.ndarray,
        service: Sequence[str] | np.ndarray,
        metric: Sequence[str] | np.ndarray,
        value: Sequence[float] | np.ndarray,
    ) -> list[FeatureRow]:
        """Push aligned arrays in order (one micro-batch); the rows the same ``push`` calls would give.

        numpy arrays are turned into Python floats/strings in one go (``tolist``), which is what
        makes this cheaper per point than calling ``push`` from a loop over array elements.
        """
        columns = [c.tolist() if isinstance(c, np.ndarray) else c for c in (ts, service, metric, value)]
        push = self.push
        rows: list[FeatureRow] = []
        for t, s, m, v in zip(*columns, strict=True):
            out = push(t, s, m, v)
            if out:
                rows.extend(out)
        return rows

    def flush(self) -> list[FeatureRow]:
        """Close every open bucket of every service now (later points for them count as late)."""
        rows: list[FeatureRow] = []
        for service, st in self._series.items():
            if st.open:
                rows.extend(self._close(service, st, max(st.open)))
        rows.sort(key=lambda r: (r.ts, r.service))
        return rows

    def forget(self, services: Iterable[str]) -> None:
        """Drop the state of services that went quiet (the engine's idle-series eviction); a
        service that comes back starts afresh, with its warm-up. Open buckets are dropped too."""
        for service in services:
            self._series.pop(service, None)

    def export_series(self, service: str) -> dict[str, Any] | None:
        """One service's state as plain lists and numbers (for snapshots), or None if never seen.

        ``import_series`` of this value into an ``OnlineFeatures`` of the same spec continues
        exactly where this one is: the rows it emits afterwards are identical.
        """
        st = self._series.get(service)
        if st is None:
            return None
        return {
            "open": [
                [
                    b,
                    [
                        None if c is None else [list(p) if isinstance(p, tuple) else p for p in c]
                        for c in cells
                    ],
                ]
                for b, cells in sorted(st.open.items())
            ],
            "closed_through": st.closed_through,
            "max_ts": st.max_ts,
            "history": [list(h) for h in st.history],
            "history_buckets": [list(h) for h in st.history_buckets],
            "sorted_windows": [[list(w) for w in ws] for ws in st.sorted_windows],
        }

    def import_series(self, service: str, state: Mapping[str, Any]) -> None:
        """Replace ``service``'s state with one from ``export_series`` (same spec)."""
        st = _ServiceState(self._plans)
        if len(state["history"]) != len(self._plans):
            n = len(state["history"])
            raise ValueError(f"feature state of {service!r} has {n} metrics, the spec {len(self._plans)}")
        st.open = {
            int(b): [
                None if c is None else [tuple(p) if isinstance(p, list) else p for p in c] for c in cells
            ]
            for b, cells in state["open"]
        }
        st.closed_through = int(state["closed_through"])
        st.max_ts = float(state["max_ts"])
        st.history = [list(h) for h in state["history"]]
        st.history_buckets = [[int(b) for b in h] for h in state["history_buckets"]]
        st.sorted_windows = [[list(w) for w in ws] for ws in state["sorted_windows"]]
        self._series[service] = st

    def stats(self) -> dict[str, int]:
        """Counters and memory in use: for metrics endpoints and for the bounded-memory test."""
        history = [len(h) for st in self._series.values() for h in st.history]
        sorted_lens = [len(w) for st in self._series.values() for ws in st.sorted_windows for w in ws]
        return {
            "accepted_points": self.accepted_points,
            "late_points": self.late_points,
            "ignored_points": self.ignored_points,
            "invalid_points": self.invalid_points,
            "rows_emitted": self.rows_emitted,
            "services": len(self._series),
            "open_buckets": sum(len(st.open) for st in self._series.values()),
            "max_open_buckets": max((len(st.open) for st in self._series.values()), default=0),
            "max_history": max(history, default=0),
            "max_sorted_window": max(sorted_lens, default=0),
        }

    # ------------------------------------------------------------------------------ internals

    def _close(self, service: str, st: _ServiceState, upto: int) -> list[FeatureRow]:
        """Close the open buckets <= ``upto`` in bucket order; mark everything <= ``upto`` closed."""
        st.closed_through = upto
        due = [b for b in st.open if b <= upto]
        if not due:
            return []
        if len(due) > 1:
            due.sort()
        rows = []
        for b in due:
            row = self._close_bucket(service, st, b, st.open.pop(b))
            if row is not None:
                rows.append(row)
        self.rows_emitted += len(rows)
        return rows

    def _close_bucket(self, service: str, st: _ServiceState, b: int, cells: list) -> FeatureRow | None:
        complete = True
        for plan in self._plans:
            mi = plan.index
            cell = cells[mi]
            if cell is None:
                complete = False
                continue
            x = clamp(
                cell[0]
                if plan.single_is_value and len(cell) == 1
                else aggregate_online(plan.aggregation, cell)
            )
            h = st.history[mi]
            hb = st.history_buckets[mi]
            h.append(x)
            hb.append(b)
            if plan.quantile_windows:
                for w, window in zip(plan.quantile_windows, st.sorted_windows[mi], strict=True):
                    slide_sorted(window, h, w)
            if len(h) > plan.span:
                del h[0]
                del hb[0]
            elif len(h) < plan.span:
                complete = False
        if not complete:
            return None
        values: list[float] = []
        start = b
        for plan in self._plans:
            mi = plan.index
            h = st.history[mi]
            srt = st.sorted_windows[mi]
            for kernel in plan.kernels:
                values.append(kernel(h, srt))
            first = st.history_buckets[mi][0]
            if first < start:
                start = first
        interval = self._interval
        return FeatureRow(b * interval, service, tuple(values), start * interval, (b + 1) * interval)
