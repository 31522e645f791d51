"""Judging a fitted stream detector on held-out feature rows against incident windows.

Two levels. ``service``: each service's alarms are matched to that service's incident windows and
the counts are summed over services (micro average), so an alarm on the wrong service is a false
alarm. ``platform``: one alarm series (any service alarming) against all windows, for detectors
meant to say "something is wrong" rather than where.

Metrics: event precision/recall/F1, mean detection delay and false alarms per day (from
``engine.evaluation.events``), the NAB score of the detector's own operating threshold (from
``engine.evaluation.nab``), and point-level average precision of the final scores.

Operators' negative labels (windows of alarms marked false, of actions whose approval was
rejected: ``engine.tracking.data``) count against a detector: ``operator_false_alarms`` is the
number of its alarm events that overlap one, and such an event is a false alarm even where it also
overlaps an incident window (the operator who looked at it outranks the incident's label), so it
lowers precision and raises false alarms per day. The test rows
are scored as the stream would score them (``StreamDetector.score_features``: every series from a
fresh state, in time order), so the figures are those of the artifact the engine runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl

from engine.detectors.stream import StreamDetector
from engine.errors import EvaluationError
from engine.tracking.spec import SplitSpec

logger = logging.getLogger(__name__)

Window = tuple[np.datetime64, np.datetime64]


Frames = dict[str, pl.DataFrame]
"""Feature rows per role (``StreamDetector.batch_features``)."""


def split_by_time(frames: Frames, split: SplitSpec) -> tuple[Frames, Frames, datetime]:
    """Train on rows before the split time, test on rows at or after it (no look-ahead); one cut for
    every role, from the time range of all of them."""
    stamps = [f["ts"] for f in frames.values() if len(f)]
    if not stamps:
        raise EvaluationError("no feature rows to split", hint="check the data range and the feature spec")
    if split.test_start is not None:
        cut = split.test_start
    else:
        lo = min(ts.min() for ts in stamps)  # type: ignore[type-var]
        hi = max(ts.max() for ts in stamps)  # type: ignore[type-var]
        cut = lo + (hi - lo) * float(split.train_fraction or 0.5)  # type: ignore[operator]
    train = {role: f.filter(pl.col("ts") < cut) for role, f in frames.items()}
    test = {role: f.filter(pl.col("ts") >= cut) for role, f in frames.items()}
    n_train, n_test = sum(map(len, train.values())), sum(map(len, test.values()))
    if not n_train or not n_test:
        raise EvaluationError(
            f"the split at {cut} leaves {n_train} training and {n_test} test rows",
            hint="move evaluation.split (train_fraction or test_start) inside the data range",
        )
    return train, test, cut  # type: ignore[return-value]


def drop_incident_rows(frame: pl.DataFrame, incidents: pl.DataFrame, margin_s: float = 0.0) -> pl.DataFrame:
    """Training rows outside every incident window of their service, widened by ``margin_s`` on
    both sides (train on normal behaviour; cascades and recoveries around an incident are not)."""
    keep = np.ones(len(frame), dtype=bool)
    ts = frame["ts"].to_numpy()
    services = frame["service"].to_numpy()
    margin = np.timedelta64(round(margin_s * 1e6), "us")
    for service, start, end in incidents.select("service", "start", "end").iter_rows():
        lo, hi = np.datetime64(start, "us") - margin, np.datetime64(end, "us") + margin
        keep &= ~((services == service) & (ts >= lo) & (ts <= hi))
    return frame.filter(pl.Series(keep))


def windows_by_service(incidents: pl.DataFrame) -> dict[str, list[Window]]:
    out: dict[str, list[Window]] = {}
    for service, start, end in incidents.select("service", "start", "end").sort("start").iter_rows():
        out.setdefault(service, []).append((np.datetime64(start, "us"), np.datetime64(end, "us")))
    return out


def merge_windows(windows: Sequence[Window]) -> list[Window]:
    """Overlapping windows become one (NAB and event matching expect disjoint windows)."""
    merged: list[list[np.datetime64]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


@dataclass
class SeriesScores:
    """One evaluated series: a service (or the whole platform) over the test period."""

    name: str
    ts: np.ndarray  # datetime64[us]
    scores: np.ndarray
    alarms: np.ndarray
    windows: list[Window]
    negatives: list[Window] = field(default_factory=list)

    def labels(self) -> np.ndarray:
        out = np.zeros(len(self.ts), dtype=bool)
        for start, end in self.windows:
            out |= (self.ts >= start) & (self.ts <= end)
        return out


@dataclass
class Assessment:
    metrics: dict[str, float]
    series: list[SeriesScores]
    threshold: float
    per_series: dict[str, dict[str, float]] = field(default_factory=dict)


def assess(
    detector: StreamDetector,
    test: Frames,
    incidents: pl.DataFrame,
    *,
    level: str = "service",
    nab_profile: str = "standard",
    negatives: pl.DataFrame | None = None,
) -> Assessment:
    """Score the ``test`` rows with ``detector`` and compute every metric against ``incidents``
    (and the operators' ``negatives``: service, start, end)."""
    scored = detector.score_features(test)
    frame = scored.select("ts", "service", "score", pl.col("anomalous").alias("alarm")).sort("service", "ts")
    threshold = detector.threshold_
    by_service = windows_by_service(incidents)
    said_no = windows_by_service(negatives) if negatives is not None else {}
    series: list[SeriesScores] = []
    if level == "platform":
        agg = frame.group_by("ts").agg(pl.col("score").max(), pl.col("alarm").any()).sort("ts")
        all_windows = merge_windows([w for ws in by_service.values() for w in ws])
        series.append(
            SeriesScores(
                "platform",
                agg["ts"].to_numpy(),
                agg["score"].to_numpy(),
                agg["alarm"].to_numpy(),
                all_windows,
                merge_windows([w for ws in said_no.values() for w in ws]),
            )
        )
    else:
        for (service,), part in frame.group_by(["service"], maintain_order=True):
            series.append(
                SeriesScores(
                    str(service),
                    part["ts"].to_numpy(),
                    part["score"].to_numpy(),
                    part["alarm"].to_numpy(),
                    merge_windows(by_service.get(str(service), [])),
                    merge_windows(said_no.get(str(service), [])),
                )
            )
    metrics, per_series = _event_metrics(series)
    metrics["nab_score"] = _nab_score(series, threshold, nab_profile)
    metrics["average_precision"] = _average_precision(series)
    metrics["threshold"] = threshold
    metrics["n_test_rows"] = float(len(frame))
    return Assessment(metrics=metrics, series=series, threshold=threshold, per_series=per_series)


def _event_metrics(series: list[SeriesScores]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per-series event metrics, summed into micro-averaged totals."""
    from engine.evaluation.events import event_metrics

    n_windows = n_detected = n_alarm_events = 0
    true_alarm_events = 0.0
    delay_sum = 0.0
    false_per_day = 0.0
    said_no = 0
    per: dict[str, dict[str, float]] = {}
    for s in series:
        m = event_metrics(s.ts, s.alarms, s.windows)
        per[s.name] = {k: float(v) for k, v in m.as_dict().items()}
        n_windows += m.n_windows
        n_detected += m.n_detected
        n_alarm_events += m.n_alarm_events
        hits, overruled = _negative_hits(s)
        said_no += hits
        per[s.name]["operator_false_alarms"] = float(hits)
        true_alarm_events += _nan0(m.precision) * m.n_alarm_events - overruled
        if m.n_detected and math.isfinite(m.mean_delay_s):
            delay_sum += m.mean_delay_s * m.n_detected
        false_per_day += _nan0(m.false_alarms_per_day)
        if overruled and len(s.ts) > 1:
            false_per_day += overruled / ((s.ts[-1] - s.ts[0]) / np.timedelta64(1, "D"))
    precision = true_alarm_events / n_alarm_events if n_alarm_events else 0.0
    recall = n_detected / n_windows if n_windows else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_delay_s": delay_sum / n_detected if n_detected else float("nan"),
        "false_alarms_per_day": false_per_day,
        "n_windows": float(n_windows),
        "n_detected": float(n_detected),
        "n_alarm_events": float(n_alarm_events),
        "operator_false_alarms": float(said_no),
    }, per


def _negative_hits(s: SeriesScores) -> tuple[int, int]:
    """(alarm events of ``s`` overlapping an operator's negative window, those of them that also
    overlap an incident window: counted true by the event metrics, overruled here)."""
    if not s.negatives:
        return 0, 0
    from engine.evaluation.events import alarm_events

    def touches(a: np.datetime64, b: np.datetime64, windows: list[Window]) -> bool:
        return any(a <= end and b >= start for start, end in windows)

    hits = overruled = 0
    for first, last in alarm_events(s.ts.astype("datetime64[us]").astype(np.int64), s.alarms):
        a, b = s.ts[first], s.ts[last]
        if touches(a, b, s.negatives):
            hits += 1
            overruled += touches(a, b, s.windows)
    return hits, overruled


def _nab_score(series: list[SeriesScores], threshold: float, profile_name: str) -> float:
    """NAB normalised score at the detector's threshold, each series treated as one NAB file."""
    from engine.evaluation.nab import PROFILES, NabCorpus, NabSeries, score_results

    profile = PROFILES.get(profile_name)
    if profile is None:
        raise EvaluationError(
            f"unknown NAB profile '{profile_name}'", hint=f"choose one of {sorted(PROFILES)}"
        )
    files = {}
    scores = {}
    for s in series:
        rows = []
        for start, end in s.windows:
            first = int(np.searchsorted(s.ts, start, "left"))
            last = int(np.searchsorted(s.ts, end, "right")) - 1
            if first <= last:
                rows.append((first, last))
        key = f"synth/{s.name}.csv"
        files[key] = NabSeries(key=key, timestamps=s.ts, values=s.scores, windows=tuple(rows))
        scores[key] = s.scores
    if not any(f.windows for f in files.values()):
        return float("nan")
    corpus = NabCorpus(root=_nowhere(), series=files, profiles={profile_name: profile})
    report = score_results(
        corpus, scores, thresholds={profile_name: threshold}, profiles={profile_name: profile}
    )
    return float(report.profiles[profile_name].score)


def _nowhere():  # type: ignore[no-untyped-def]
    from pathlib import Path

    return Path("<selfheal-evaluation>")


def _average_precision(series: list[SeriesScores]) -> float:
    from sklearn.metrics import average_precision_score

    labels = np.concatenate([s.labels() for s in series]) if series else np.empty(0, dtype=bool)
    scores = np.concatenate([s.scores for s in series]) if series else np.empty(0)
    if not labels.any():
        return float("nan")
    return float(average_precision_score(labels, scores))


def _nan0(value: float) -> float:
    return 0.0 if value is None or not math.isfinite(value) else float(value)
