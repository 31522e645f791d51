"""Event-level evaluation of alarms against incident windows.

Point-wise precision/recall rewards a detector for firing on every row of a long incident and
punishes it for the rows it skips; operators care about events: did an incident get an alarm, how
late, and how many alarm events were false. Definitions (all times naive UTC):

* **Alarm events**: alarm points merged in index order; consecutive alarm points always belong to one
  event, and two runs separated by at most ``merge_gap_s`` seconds (last alarm of one run to the first
  of the next) merge too. An event spans [first alarm ts, last alarm ts].
* A **window** [start, end] (inclusive) is *detected* when an alarm point falls in
  [start - early_tolerance_s, end]. ``early_tolerance_s`` (default 0) credits an alarm shortly before
  the labelled start, since labels are approximate; with it, delays can be negative (early).
* **precision** = alarm events overlapping some (tolerance-extended) window / all alarm events.
* **recall** = detected windows / windows. **f1** = their harmonic mean (0 when both are 0).
* **delay** of a detected window = first alarm point in it - window start, in seconds; mean and median
  over detected windows (NaN when no window is detected).
* **false_alarms_per_day** = alarm events overlapping no window / days spanned by ``ts``
  (last - first; NaN when the span is 0).
* Empty cases are vacuous truths: no alarm events -> precision 1.0 (nothing was false); no windows ->
  recall 1.0 (nothing was missed). F1 stays honest: a silent detector with windows to find gets 0,
  a detector firing on a series without incidents gets 0, silence on a quiet series gets 1.
* An alarm event spanning two windows is one true alarm event, and each window it has alarm points in
  is detected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np

from engine.errors import EvaluationError

__all__ = ["EventMetrics", "alarm_events", "event_metrics"]

_US_PER_S = 1_000_000
_S_PER_DAY = 86_400.0


@dataclass(frozen=True)
class EventMetrics:
    """Event-level scores of one alarm series against its incident windows."""

    precision: float
    recall: float
    f1: float
    mean_delay_s: float
    median_delay_s: float
    false_alarms_per_day: float
    n_windows: int
    n_detected: int
    n_alarm_events: int
    n_false_alarm_events: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_us(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
        if arr.dtype.kind != "M":
            arr = arr.astype("datetime64[us]")
        return arr.astype("datetime64[us]").astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise EvaluationError(
            f"{what} cannot be read as timestamps: {exc}", hint="pass datetime64 values"
        ) from exc


def _one_ts(value: np.datetime64 | datetime | str, what: str) -> int:
    return int(_as_us(np.array([value]), what)[0])


def alarm_events(ts_us: np.ndarray, alarms: np.ndarray, merge_gap_s: float = 0.0) -> list[tuple[int, int]]:
    """Alarm events as (first index, last index) pairs over sorted integer-microsecond timestamps."""
    idx = np.flatnonzero(alarms)
    if idx.size == 0:
        return []
    gap_us = merge_gap_s * _US_PER_S
    breaks = [
        k
        for k in range(1, idx.size)
        if idx[k] != idx[k - 1] + 1 and ts_us[idx[k]] - ts_us[idx[k - 1]] > gap_us
    ]
    starts = [0, *breaks]
    ends = [*(b - 1 for b in breaks), idx.size - 1]
    return [(int(idx[s]), int(idx[e])) for s, e in zip(starts, ends, strict=True)]


def event_metrics(
    ts: Any,
    alarms: Any,
    windows: Sequence[tuple[Any, Any]],
    *,
    merge_gap_s: float = 0.0,
    early_tolerance_s: float = 0.0,
) -> EventMetrics:
    """Score boolean ``alarms`` at sorted timestamps ``ts`` against incident ``windows`` (see module doc)."""
    ts_us = _as_us(ts, "ts")
    flags = np.asarray(alarms, dtype=bool).reshape(-1)
    if ts_us.ndim != 1 or ts_us.size != flags.size:
        raise EvaluationError(
            f"ts has {ts_us.size} values but alarms has {flags.size}",
            hint="pass one alarm flag per timestamp",
        )
    if ts_us.size > 1 and (np.diff(ts_us) < 0).any():
        raise EvaluationError("ts is not sorted ascending", hint="sort the series by time before scoring")
    if merge_gap_s < 0 or early_tolerance_s < 0:
        raise EvaluationError("merge_gap_s and early_tolerance_s must be >= 0")
    tol_us = round(early_tolerance_s * _US_PER_S)
    spans: list[tuple[int, int]] = []
    for i, (start, end) in enumerate(windows):
        s, e = _one_ts(start, f"windows[{i}].start"), _one_ts(end, f"windows[{i}].end")
        if e < s:
            raise EvaluationError(f"windows[{i}] ends before it starts", hint="each window is (start, end)")
        spans.append((s, e))

    events = alarm_events(ts_us, flags, merge_gap_s)
    alarm_ts = ts_us[flags]

    delays: list[float] = []
    for s, e in spans:
        lo = np.searchsorted(alarm_ts, s - tol_us, side="left")
        if lo < alarm_ts.size and alarm_ts[lo] <= e:
            delays.append((int(alarm_ts[lo]) - s) / _US_PER_S)

    def overlaps(first: int, last: int) -> bool:
        a, b = ts_us[first], ts_us[last]
        return any(a <= e and b >= s - tol_us for s, e in spans)

    n_true = sum(overlaps(first, last) for first, last in events)
    n_events, n_windows, n_detected = len(events), len(spans), len(delays)
    n_false = n_events - n_true
    precision = n_true / n_events if n_events else 1.0
    recall = n_detected / n_windows if n_windows else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    span_days = (ts_us[-1] - ts_us[0]) / _US_PER_S / _S_PER_DAY if ts_us.size else 0.0
    return EventMetrics(
        precision=precision,
        recall=recall,
        f1=f1,
        mean_delay_s=float(np.mean(delays)) if delays else math.nan,
        median_delay_s=float(np.median(delays)) if delays else math.nan,
        false_alarms_per_day=n_false / span_days if span_days > 0 else math.nan,
        n_windows=n_windows,
        n_detected=n_detected,
        n_alarm_events=n_events,
        n_false_alarm_events=n_false,
    )
