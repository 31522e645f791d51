"""Detector families compared per incident kind on synthetic platform data: recall and detection delay.

The question (issue 8): are slow failures (latency creep, stale index) caught earlier by detectors that
compare a service with its own history (forecast residuals, drift) than by IForest on raw features?

Protocol, the same for every family, so only the detector differs:

* features: per service, every metric the service emits at the platform's native 10-second
  interval (``raw``), no other transform, so the families see the same numbers IForest does;
* per service, a detector is fitted on the first ``train_days`` and scores the rest *in time order,
  continuing from the end of training* (sequence detectors carry their state across; nothing scores a
  row with data from after it);
* "normal" training rows: outside every incident window of *any* service (a cascade is labelled on
  its root only, but its victims' metrics move too) and the ``guard_s`` after each (windowed
  scores still see the incident);
* threshold from *out-of-sample* scores of normal training rows, for every family alike. A sequence
  detector is fitted on all training rows, consecutive, as it must be (its constants are robust),
  and its ``train_scores_`` are one step ahead: each row scored before the state has seen it. A
  stateless detector (IForest, KMeans) is fitted on the normal rows of the first part of the
  training period and scores the held-out last ``holdout_fraction`` of it. Scoring its own
  training rows instead would set its threshold on rows it was fitted to (KMeans' centroids sit
  among them, IForest's trees were grown on them), whose scores say little about rows it has
  never seen: its test false-alarm rate, and so its delays, would not be bought at the same price;
* the threshold is the same *false-alarm budget* for all: the lowest at which those scores raise
  at most ``alarms_per_day`` alarm events a day (a row quantile would not do: IForest's alarms
  come one row at a time, a forecaster's in runs, so the same share of alarming rows is several
  times more alarm events for IForest, and its delays would be bought with false alarms);
* a row's alarm counts at the *end* of its bucket (when the row exists), so a delay is the time from
  the labelled start to the first alarm an operator could have seen; only incidents that start after
  the training period count, each on its root service (labels are on the root);
* false alarms per day: alarm events (merged within ``merge_gap_s``) overlapping no incident window
  of their service, over all services and test days.

``compare_families(data)`` returns a ``FamilyComparison`` whose ``table()`` is the per-kind markdown
table of the README; ``log_comparison`` records it in MLflow (one parent run, one child per family).
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from engine.errors import EvaluationError

__all__ = [
    "DEFAULT_FAMILIES",
    "FAMILY_MODULES",
    "Family",
    "FamilyComparison",
    "KindResult",
    "compare_families",
    "event_rate_threshold",
    "log_comparison",
    "merge",
    "run_default_comparison",
]

log = logging.getLogger(__name__)

FAMILY_MODULES = (
    "engine.detectors.forecast",
    "engine.detectors.drift",
    "engine.detectors.cluster",
    "engine.detectors.ensemble",
)
"""Modules registering the detector families (imported here until the registry lists them)."""

DAY_10S = 8640  # rows per daily season of 10-second buckets (the platform's native interval)

HEALTH = ("latency_*", "ttft_*", "error_*", "queue_*", "memory_*", "retrieval_*", "tokens_*", "response_*")
"""Metrics that say whether a service is healthy, not how busy it is (load follows the weekday)."""
QUALITY = ("retrieval_*", "response_variability__*")
"""The slowly decaying quality metrics the drift detectors are meant for."""
TAILS = {
    "latency_*": "upper",
    "ttft_*": "upper",
    "error_rate*": "upper",
    "queue_*": "upper",
    "memory_*": "upper",
    "response_variability*": "upper",
    "retrieval_*": "lower",
    "tokens_*": "lower",
}
"""The bad direction of each health metric (the forecaster ignores the harmless one)."""


@dataclass(frozen=True)
class Family:
    """One contender: a label for the table, a registered detector name and its parameters.

    ``features``: ``fnmatch`` patterns of the feature columns it watches (None = all); a service
    with none of them gets no alarms from this family (its incidents count as missed).
    """

    label: str
    detector: str
    params: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] | None = None


_SEASONAL = {"season": DAY_10S, "smooth": 30, "window": 30, "tail": TAILS}
_CUSUM = {"reference": 360, "gap": 0, "drift": 0.5, "tail": TAILS}

DEFAULT_FAMILIES: tuple[Family, ...] = (
    Family("IForest (raw)", "IForest", {"n_estimators": 100}),
    Family("KMeansDistance", "KMeansDistance", {"n_clusters": 8}),
    Family("SeasonalResidual", "SeasonalResidual", _SEASONAL, HEALTH),
    Family("CUSUM", "CUSUM", _CUSUM, QUALITY),
    Family(
        "WindowShift (PSI)",
        "WindowShift",
        {"statistic": "psi", "window": 60, "reference": 720, "gap": 60, "bins": 8},
        QUALITY,
    ),
    *(
        Family(
            f"Ensemble ({combine})",
            "Ensemble",
            {
                "combine": combine,
                "members": [
                    {"name": "SeasonalResidual", "params": _SEASONAL, "features": list(HEALTH)},
                    {"name": "CUSUM", "params": _CUSUM, "features": list(QUALITY)},
                ],
            },
        )
        for combine in ("max", "mean")
    ),
)
"""The comparison the README reports (tuned on seeds 0 and 4, reported on seeds 1-3): the baseline
first, then one configuration per family. Forecast and drift detectors watch the metrics they are
meant for (health / quality); IForest and KMeans see every raw metric."""


@dataclass(frozen=True)
class KindResult:
    """One family on one incident kind."""

    family: str
    kind: str
    n: int
    detected: int
    delays_s: tuple[float, ...]

    @property
    def recall(self) -> float:
        return self.detected / self.n if self.n else math.nan

    @property
    def median_delay_s(self) -> float:
        return float(np.median(self.delays_s)) if self.delays_s else math.nan

    @property
    def mean_delay_s(self) -> float:
        return float(np.mean(self.delays_s)) if self.delays_s else math.nan


@dataclass
class FamilyComparison:
    """Per (family, kind) results plus per-family false alarms; ``table()`` renders the README table."""

    families: list[str]
    kinds: list[str]
    results: dict[tuple[str, str], KindResult]
    false_alarms_per_day: dict[str, float]
    test_days: float
    settings: dict[str, Any]

    def as_rows(self) -> list[dict[str, Any]]:
        """Flat rows (family, kind, n, detected, recall, median/mean delay in minutes)."""
        rows = []
        for (family, kind), r in self.results.items():
            rows.append(
                {
                    "family": family,
                    "kind": kind,
                    "n": r.n,
                    "detected": r.detected,
                    "recall": r.recall,
                    "median_delay_min": r.median_delay_s / 60.0,
                    "mean_delay_min": r.mean_delay_s / 60.0,
                }
            )
        return rows

    def table(self) -> str:
        """Markdown: one row per kind, one column per family, cells "recall · median delay"."""
        head = "| incident kind (n) | " + " | ".join(self.families) + " |"
        rule = "|---|" + "---|" * len(self.families)
        lines = [head, rule]
        for kind in self.kinds:
            n = next((self.results[(f, kind)].n for f in self.families if (f, kind) in self.results), 0)
            cells = []
            for family in self.families:
                r = self.results.get((family, kind))
                if r is None or not r.n:
                    cells.append("-")
                    continue
                delay = f"{r.median_delay_s / 60.0:.0f} min" if r.delays_s else "—"
                cells.append(f"{r.detected}/{r.n} · {delay}")
            lines.append(f"| {kind} ({n}) | " + " | ".join(cells) + " |")
        fa = " | ".join(f"{self.false_alarms_per_day[f]:.2f}" for f in self.families)
        lines.append(f"| false alarms / day | {fa} |")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ the protocol


def _register_families() -> None:
    import importlib

    for module in FAMILY_MODULES:
        importlib.import_module(module)


def service_features(points: pl.DataFrame, service: str, interval: str = "10s") -> pl.DataFrame:
    """``ts`` + the bucket mean of every metric ``service`` emits (sorted by metric name)."""
    from engine.features import FeatureSpec, batch_features

    mine = points.filter(pl.col("service") == service)
    metrics = sorted(mine["metric"].unique().to_list())
    spec = FeatureSpec.model_validate(
        {"interval": interval, "metrics": {m: {"transforms": ["raw"]} for m in metrics}}
    )
    frame = batch_features(mine, spec)
    step = np.diff(frame["ts"].to_numpy().astype("datetime64[us]").astype(np.int64))
    if step.size and (step != step[0]).any():
        raise EvaluationError(
            f"{service}: feature rows are not consecutive buckets (gaps in the data)",
            hint="sequence detectors need contiguous rows; fill or drop the gaps first",
        )
    return frame.select("ts", *spec.feature_names)


def _incident_mask(
    ts: np.ndarray, windows: Sequence[tuple[np.datetime64, np.datetime64]], guard: np.timedelta64
) -> np.ndarray:
    """Rows inside an incident window or less than ``guard`` after its end."""
    mask = np.zeros(ts.shape, dtype=bool)
    for start, end in windows:
        mask |= (ts >= start) & (ts <= end + guard)
    return mask


def event_rate_threshold(ts: np.ndarray, scores: np.ndarray, per_day: float, merge_gap_s: float) -> float:
    """The lowest threshold at which ``scores`` (normal rows, sorted ``ts``) raise at most ``per_day``
    alarm events a day (alarms merged within ``merge_gap_s``, as the evaluation counts them).

    A quantile of the scores would fix the share of alarming *rows*; families differ in how their
    alarms cluster (a forecaster's alarms come in runs, IForest's one row at a time), so equal row
    shares give very different false alarms per day. Equal event rates compare delays fairly.
    """
    from engine.evaluation.events import alarm_events

    if len(scores) < 2:
        raise EvaluationError(
            "fewer than 2 normal training rows to set a threshold on",
            hint="train on more days (incident windows and their guard are left out)",
        )
    ts_us = ts.astype("datetime64[us]").astype(np.int64)
    days = len(ts_us) * float(np.median(np.diff(ts_us))) / 86_400e6  # normal rows only: gaps don't count
    budget = per_day * days
    candidates = np.unique(np.quantile(scores, np.linspace(0.9, 1.0, 401)))
    lo, hi = 0, len(candidates) - 1  # candidates[hi] (the maximum) raises no alarm at all
    while lo < hi:
        mid = (lo + hi) // 2
        if len(alarm_events(ts_us, scores > candidates[mid], merge_gap_s)) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return float(candidates[hi])


def _fit_and_score(
    family: Family,
    X_train: np.ndarray,
    X_test: np.ndarray,
    names: list[str],
    normal: np.ndarray,
    random_state: int,
    holdout_fraction: float,
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Out-of-sample raw scores of the last training rows, raw test scores, and the number of
    leading training rows without such a score; None when the family watches none of the columns.

    A sequence detector is fitted on all training rows, consecutive (its constants are robust); its
    one-step-ahead ``train_scores_`` cover the rows after its warm-up. A stateless detector is
    fitted on the ``normal`` rows before the held-out tail (the last ``holdout_fraction`` of the
    training rows) and scores the tail."""
    from engine.detectors import make_detector

    if family.features is not None:
        cols = [i for i, n in enumerate(names) if any(fnmatch.fnmatchcase(n, p) for p in family.features)]
        if not cols:
            return None
        X_train, X_test, names = X_train[:, cols], X_test[:, cols], [names[i] for i in cols]
    det = make_detector(family.detector, family.params, random_state=random_state)
    if getattr(det, "stateful", False):
        det.fit(X_train, feature_names=names)
        train = np.asarray(det.train_scores_, dtype=np.float64)  # type: ignore[attr-defined]
    else:
        split = X_train.shape[0] - round(X_train.shape[0] * holdout_fraction)
        det.fit(X_train[:split][normal[:split]], feature_names=names)
        train = det.score(X_train[split:])
    unscored = X_train.shape[0] - train.shape[0]
    return train, det.score(X_test), unscored


def compare_families(
    points: pl.DataFrame,
    incidents: pl.DataFrame,
    *,
    families: Sequence[Family] = DEFAULT_FAMILIES,
    train_days: float = 4.0,
    interval: str = "10s",
    alarms_per_day: float = 1.0,
    merge_gap_s: float = 600.0,
    guard_s: float = 3600.0,
    holdout_fraction: float = 0.5,
    random_state: int = 0,
) -> FamilyComparison:
    """Run every family on every service of ``points`` and judge it per incident kind (module doc).

    ``holdout_fraction``: the share of the training period a stateless detector does not fit on
    and sets its threshold on.
    """
    from engine.evaluation.events import event_metrics
    from engine.features import parse_duration

    if not 0.0 < holdout_fraction < 1.0:
        raise EvaluationError(
            f"holdout_fraction must be strictly between 0 and 1, got {holdout_fraction!r}",
            hint="0.5 fits stateless detectors on the first half of the training days",
        )

    _register_families()
    step = np.timedelta64(round(parse_duration(interval) * 1e6), "us")
    t0 = points["ts"].min()
    if not isinstance(t0, datetime):
        raise EvaluationError("points are empty", hint="generate or load some telemetry first")
    cut = np.datetime64(t0 + timedelta(days=train_days), "us")
    guard = np.timedelta64(round(guard_s * 1e6), "us")
    kinds = sorted(incidents["kind"].unique().to_list())
    # cascades are labelled on the root only, so "normal" training rows avoid every service's incidents
    platform_windows = [
        (np.datetime64(s, "us"), np.datetime64(e, "us"))
        for s, e in incidents.select("start", "end").iter_rows()
    ]
    results: dict[tuple[str, str], list[tuple[bool, float]]] = {}
    false_events: dict[str, int] = {f.label: 0 for f in families}
    test_days = 0.0
    for service in sorted(points["service"].unique().to_list()):
        frame = service_features(points, service, interval)
        ts = frame["ts"].to_numpy().astype("datetime64[us]")
        names = frame.columns[1:]
        X = frame.select(names).to_numpy().astype(np.float64)
        train_rows = int(np.searchsorted(ts, cut, side="left"))
        if train_rows == 0 or train_rows == len(ts):
            raise EvaluationError(
                f"{service}: train_days={train_days} leaves no training or no test rows",
                hint="generate more days or lower train_days",
            )
        mine = incidents.filter(pl.col("service") == service).sort("start")
        windows = [
            (np.datetime64(s, "us"), np.datetime64(e, "us"), k)
            for s, e, k in mine.select("start", "end", "kind").iter_rows()
        ]
        all_windows = [(s, e) for s, e, _ in windows]
        test_ts = ts[train_rows:] + step  # a row exists (and can alarm) at the end of its bucket
        test_days += float((test_ts[-1] - test_ts[0]) / np.timedelta64(1, "D")) if len(test_ts) > 1 else 0.0
        normal = ~_incident_mask(ts[:train_rows] + step, platform_windows, guard)
        for family in families:
            fitted = _fit_and_score(
                family, X[:train_rows], X[train_rows:], names, normal, random_state, holdout_fraction
            )
            if fitted is None:
                for start, _end, kind in windows:
                    if start >= cut:
                        results.setdefault((family.label, kind), []).append((False, math.nan))
                continue
            train, test, unscored = fitted
            keep = normal[unscored:]
            threshold = event_rate_threshold(
                (ts[unscored:train_rows] + step)[keep], train[keep], alarms_per_day, merge_gap_s
            )
            alarms = test > threshold
            for start, end, kind in windows:
                if start < cut:
                    continue
                m = event_metrics(test_ts, alarms, [(start, end)])
                results.setdefault((family.label, kind), []).append(
                    (m.n_detected == 1, m.mean_delay_s if m.n_detected else math.nan)
                )
            overall = event_metrics(test_ts, alarms, all_windows, merge_gap_s=merge_gap_s)
            false_events[family.label] += overall.n_false_alarm_events
            log.info("%s on %s: %d alarm rows", family.label, service, int(alarms.sum()))
    n_services = points["service"].n_unique()
    per_day = test_days / n_services if n_services else 0.0
    out = {
        key: KindResult(key[0], key[1], len(v), sum(d for d, _ in v), tuple(x for d, x in v if d))
        for key, v in results.items()
    }
    return FamilyComparison(
        families=[f.label for f in families],
        kinds=[k for k in kinds if any((f.label, k) in out for f in families)],
        results=out,
        false_alarms_per_day={f: (n / per_day if per_day else math.nan) for f, n in false_events.items()},
        test_days=per_day,
        settings={
            "train_days": train_days,
            "interval": interval,
            "alarms_per_day": alarms_per_day,
            "merge_gap_s": merge_gap_s,
            "guard_s": guard_s,
            "holdout_fraction": holdout_fraction,
            "random_state": random_state,
            "families": [
                {"label": f.label, "detector": f.detector, "params": f.params, "features": f.features}
                for f in families
            ],
        },
    )


def merge(comparisons: Sequence[FamilyComparison]) -> FamilyComparison:
    """Pool several comparisons (e.g. several synthetic seeds) into one: incidents add up."""
    if not comparisons:
        raise EvaluationError("nothing to merge", hint="pass at least one FamilyComparison")
    first = comparisons[0]
    pooled: dict[tuple[str, str], KindResult] = {}
    for comp in comparisons:
        for key, r in comp.results.items():
            old = pooled.get(key)
            pooled[key] = (
                r
                if old is None
                else KindResult(
                    key[0], key[1], old.n + r.n, old.detected + r.detected, old.delays_s + r.delays_s
                )
            )
    days = sum(c.test_days for c in comparisons)
    fa = {
        f: sum(c.false_alarms_per_day[f] * c.test_days for c in comparisons) / days if days else math.nan
        for f in first.families
    }
    kinds = sorted({k for c in comparisons for k in c.kinds})
    return FamilyComparison(first.families, kinds, pooled, fa, days, dict(first.settings))


def run_default_comparison(
    seeds: Sequence[int] = (1, 2, 3),
    days: float = 14.0,
    *,
    families: Sequence[Family] = DEFAULT_FAMILIES,
    train_days: float = 4.0,
    interval: str = "10s",
    alarms_per_day: float = 1.0,
    holdout_fraction: float = 0.5,
) -> FamilyComparison:
    """The README's comparison: ``days`` of the default synthetic platform per seed, pooled over seeds.

    The entry point to wire into a CLI command; it reads only the default synth config.
    """
    from engine.telemetry.synth import generate, load_config

    cfg = load_config()
    comps = []
    for seed in seeds:
        data = generate(cfg, days=days, seed=seed)
        comps.append(
            compare_families(
                data.points,
                data.incidents,
                families=families,
                train_days=train_days,
                interval=interval,
                alarms_per_day=alarms_per_day,
                holdout_fraction=holdout_fraction,
            )
        )
        log.info("seed %d done", seed)
    out = merge(comps)
    out.settings.update({"seeds": list(seeds), "days": days})
    return out


def log_comparison(comparison: FamilyComparison, *, tracking_uri: str, experiment: str = "families") -> str:
    """Log to MLflow: a parent run (settings, markdown table) and one child run per family with its
    per-kind recall and median delay; returns the parent run id."""
    import mlflow

    from engine.home import use_tracking

    use_tracking(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else mlflow.create_experiment(experiment)
    with mlflow.start_run(experiment_id=exp_id, run_name="families comparison") as parent:
        mlflow.log_params(
            {k: v for k, v in comparison.settings.items() if k != "families"}
            | {"test_days": comparison.test_days}
        )
        mlflow.log_dict(comparison.settings, "settings.json")
        mlflow.log_text(comparison.table(), "per_kind_delay.md")
        mlflow.log_dict({"rows": comparison.as_rows()}, "per_kind.json")
        for spec in comparison.settings["families"]:
            label = spec["label"]
            with mlflow.start_run(experiment_id=exp_id, run_name=label, nested=True):
                mlflow.log_params({"detector": spec["detector"], "params": str(spec["params"])[:500]})
                metrics = {"false_alarms_per_day": comparison.false_alarms_per_day[label]}
                for kind in comparison.kinds:
                    r = comparison.results.get((label, kind))
                    if r is None:
                        continue
                    metrics[f"{kind}.recall"] = r.recall
                    if r.delays_s:
                        metrics[f"{kind}.median_delay_min"] = r.median_delay_s / 60.0
                mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        return parent.info.run_id
