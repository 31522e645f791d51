"""What the notebooks call: thin, tested functions so that no logic lives only in a notebook.

Every function opens the telemetry store read-only for one query and closes it (DuckDB lets a
writer lock out readers; a notebook kernel that keeps the file open would block ``selfheal
ingest``). The scheduled evaluation is a library function too, so cron can run it through
papermill and a test can run it without.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from engine.detectors.stream import StreamDetector
from engine.errors import EvaluationError, InputError
from engine.hints import selfheal_command
from engine.home import Home
from engine.tracking import registry
from engine.tracking.assessment import Assessment, assess
from engine.tracking.data import load_dataset
from engine.tracking.spec import DataSpec, validate_spec

logger = logging.getLogger(__name__)


class QualityGateError(EvaluationError):
    """The evaluated model is below the quality bar (makes papermill, and cron, exit non-zero)."""


def _home(home: str | Path | Home | None) -> Home:
    return home if isinstance(home, Home) else Home.resolve(home)


def load_telemetry(
    home: str | Path | Home | None = None,
    *,
    services: list[str] | None = None,
    metrics: list[str] | None = None,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    last_days: float | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(points, incidents) from the store as Polars frames; the store is closed on return."""
    data = DataSpec(services=services, metrics=metrics, start=start, end=end, last_days=last_days)  # type: ignore[arg-type]
    ds = load_dataset(data, _home(home).telemetry_db)
    return ds.points, ds.incidents


def plot_telemetry(
    points: pl.DataFrame, incidents: pl.DataFrame, *, metrics: list[str] | None = None, max_metrics: int = 6
) -> Any:
    """One panel per metric, one line per service (1-minute means), incident windows shaded."""
    from engine.tracking.plots import _pyplot

    plt = _pyplot()
    names = metrics or sorted(points["metric"].unique().to_list())[:max_metrics]
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 1.9 * len(names) + 0.6), sharex=True, squeeze=False)
    per_minute = (
        points.filter(pl.col("metric").is_in(names))
        .group_by_dynamic("ts", every="1m", group_by=["service", "metric"])
        .agg(pl.col("value").mean())
    )
    for ax, metric in zip(axes[:, 0], names, strict=True):
        part = per_minute.filter(pl.col("metric") == metric)
        for (service,), series in part.sort("ts").group_by(["service"], maintain_order=True):
            ax.plot(series["ts"].to_numpy(), series["value"].to_numpy(), lw=0.6, label=str(service))
        for start, end in incidents.select("start", "end").iter_rows():
            ax.axvspan(start, end, color="tab:red", alpha=0.15, lw=0)
        ax.set_ylabel(metric, rotation=0, ha="right", fontsize=8)
    axes[0, 0].legend(fontsize=7, ncol=6, loc="upper left")
    fig.tight_layout()
    return fig


@dataclass
class TuneResult:
    """One tuned configuration: the MLflow run, its metrics, and the scores to plot."""

    run_id: str
    parent_run_id: str
    metrics: dict[str, float]
    detector: StreamDetector
    assessment: Assessment


def tune_detector(
    detector: str,
    params: dict[str, Any] | None = None,
    *,
    features: dict[str, Any],
    home: str | Path | Home | None = None,
    services: list[str] | None = None,
    start: str | datetime | None = None,
    end: str | datetime | None = None,
    train_fraction: float = 0.5,
    threshold_q: float = 0.99,
    tracking_uri: str | None = None,
    experiment: str = "notebook-tuning",
) -> TuneResult:
    """Fit, judge and log one detector exactly as a one-configuration experiment spec would."""
    from engine.tracking.experiment import prepare, run_experiment

    raw = {
        "name": experiment,
        "data": {"services": services, "start": _iso(start), "end": _iso(end)},
        "features": features,
        "detectors": [{"class": detector, "params": dict(params or {})}],
        "threshold": {"kind": "quantile", "q": threshold_q},
        "evaluation": {"split": {"train_fraction": train_fraction}},
    }
    loaded = validate_spec(raw, file="<notebook>")
    h = _home(home)
    sweep = run_experiment(loaded, home=h, tracking_uri=tracking_uri, workers=1, progress=False)
    best = sweep.best
    assert best is not None and best.detector is not None and best.run_id is not None
    prepared = prepare(loaded, h.telemetry_db)
    assessment = assess(best.detector, prepared.test, prepared.test_incidents)
    return TuneResult(best.run_id, sweep.parent_run_id, best.metrics, best.detector, assessment)


def _iso(value: str | datetime | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


@dataclass
class ChampionEvaluation:
    """The scheduled evaluation's outcome."""

    model_uri: str
    version: str
    run_id: str
    window_start: datetime
    window_end: datetime
    metrics: dict[str, float]
    assessment: Assessment
    mlflow_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def evaluate_champion(
    model_name: str,
    *,
    alias: str = "champion",
    window_days: float = 2.0,
    home: str | Path | Home | None = None,
    tracking_uri: str | None = None,
    level: str = "service",
    mlflow_run_id: str | None = None,
    experiment: str = "scheduled-evaluation",
) -> ChampionEvaluation:
    """Score the model behind ``models:/NAME@ALIAS`` on the most recent ``window_days`` of data.

    Features need history before the window (rolling windows), so the points are read from a
    warm-up margin before it; only rows inside the window are judged. Metrics go to MLflow: into
    ``mlflow_run_id`` when given (``selfheal evaluate`` creates it), else into a new run.
    """
    import tempfile

    import mlflow

    from engine.tracking.model import load_logged_detector

    h = _home(home)
    uri = registry.resolve_tracking_uri(h, tracking_uri)
    model_uri = f"models:/{model_name}@{alias}"
    version = registry.resolve_version(model_uri, tracking_uri=uri)
    with tempfile.TemporaryDirectory(prefix="selfheal-champion-") as tmp:
        detector = load_logged_detector(f"models:/{model_name}/{version.version}", tracking_uri=uri, dst=tmp)
    warmup = timedelta(seconds=detector.warmup_s)
    latest = _latest_ts(h)
    window_end = latest + timedelta(microseconds=1)
    window_start = window_end - timedelta(days=window_days)
    data = DataSpec(start=window_start - warmup, end=window_end, metrics=detector.metric_names)
    ds = load_dataset(data, h.telemetry_db)
    frames = {
        role: f.filter(pl.col("ts") >= window_start) for role, f in detector.batch_features(ds.points).items()
    }
    if not any(len(f) for f in frames.values()):
        raise InputError(
            f"no complete feature rows in the last {window_days} days",
            hint="ingest recent telemetry or widen window_days",
        )
    incidents = ds.incidents.filter(pl.col("end") >= window_start)
    negatives = ds.negatives.filter(pl.col("end") >= window_start)
    assessment = assess(detector, frames, incidents, level=level, negatives=negatives)
    metrics = {k: v for k, v in assessment.metrics.items() if isinstance(v, float) and math.isfinite(v)}
    registry.use_tracking(uri)
    if mlflow_run_id:
        run_ctx = mlflow.start_run(run_id=mlflow_run_id)
    else:
        run_ctx = mlflow.start_run(
            experiment_id=registry.ensure_experiment(experiment, tracking_uri=uri, home=h),
            run_name=f"evaluate {model_name}@{alias}",
        )
    with run_ctx as run:
        mlflow.set_tags(
            {
                "selfheal.kind": "scheduled_evaluation",
                "selfheal.model_name": model_name,
                "selfheal.model_version": str(version.version),
                "selfheal.model_run_id": version.run_id or "",
                registry.TAG_FINGERPRINT: ds.fingerprint,
            }
        )
        mlflow.log_params({"alias": alias, "window_days": window_days, "window_start": str(window_start)})
        mlflow.log_metrics(metrics)
        active = run.info.run_id
    return ChampionEvaluation(
        model_uri=model_uri,
        version=str(version.version),
        run_id=version.run_id or "",
        window_start=window_start,
        window_end=window_end,
        metrics=metrics,
        assessment=assessment,
        mlflow_run_id=active,
    )


def gate_verdict(
    model_name: str,
    *,
    alias: str = "champion",
    home: str | Path | Home | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Why the version behind ``models:/NAME@ALIAS`` holds it: the gate's verdict and its table
    (champion against challenger per criterion) as ``promote`` recorded them on the version, so a
    scheduled evaluation shows what the model was promoted on beside how it does now."""
    uri = registry.resolve_tracking_uri(_home(home), tracking_uri)
    version = registry.resolve_version(f"models:/{model_name}@{alias}", tracking_uri=uri)
    tags = version.tags or {}
    head = f"models:/{model_name}@{alias} = version {version.version}: "
    head += tags.get("selfheal.gate", "no gate verdict recorded (registered outside selfheal promote)")
    table = tags.get("selfheal.gate_table", "")
    return f"{head}\n{table}" if table else head


def _latest_ts(home: Home) -> datetime:
    from engine.telemetry.store import TelemetryStore

    if not home.telemetry_db.is_file():
        raise InputError(
            f"telemetry store {home.telemetry_db} does not exist",
            hint=selfheal_command(home, "synth", "--days", "7"),
        )
    with TelemetryStore(home.telemetry_db, read_only=True) as store:
        latest = store.query("SELECT max(ts) AS ts FROM telemetry")["ts"][0]
    if latest is None:
        raise InputError(
            f"telemetry store {home.telemetry_db} is empty",
            hint=selfheal_command(home, "synth", "--days", "7"),
        )
    return latest


def check_quality(metrics: dict[str, float], *, metric: str = "f1", minimum: float = 0.0) -> None:
    """Raise QualityGateError when ``metrics[metric]`` is missing or below ``minimum``."""
    value = metrics.get(metric)
    if value is None or not math.isfinite(value) or value < minimum:
        raise QualityGateError(
            f"quality gate failed: {metric} = {value} < {minimum}",
            hint="inspect the executed notebook; retrain (selfheal experiment run) "
            "or roll back (selfheal models rollback)",
        )
    logger.info("quality gate passed: %s = %.4f >= %.4f", metric, value, minimum)
