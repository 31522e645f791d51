"""Running an experiment spec: a detector sweep fitted in parallel and tracked in MLflow.

Shape of a sweep: the parent process reads the data once (short read-only store connection),
computes the batch features once (per role: the metric groups a service is scored on), and splits
them by time. Workers fit and judge one configuration each (a ``StreamDetector``: the artifact the
engine runs) and hand back the fitted detector, metrics and plots (as bytes); they never touch
MLflow or the parent's disk. The workers are spawned processes of this machine or Ray tasks
(``--executor ray``, ``engine.pools``): the parent logs each result as it arrives, whichever ran
it, so tracking (a single SQLite writer, or an HTTP server) overlaps with fitting, is never written
by two processes at once, and holds the same runs on either executor.

MLflow layout: one parent run per sweep (spec file, data fingerprint, summary table, best child),
one nested child run per configuration (params, metrics, plots, the pyfunc model).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from engine.detectors.stream import StreamDetector
from engine.errors import TrackingError
from engine.home import Home
from engine.pools import Say, check, open_pool
from engine.tracking import registry
from engine.tracking.assessment import Frames, assess, drop_incident_rows, split_by_time
from engine.tracking.data import Dataset, load_dataset
from engine.tracking.spec import DetectorConfig, LoadedSpec, load_spec

logger = logging.getLogger(__name__)

#: Where the sweep's configurations ran (``local`` or ``ray``): a tag of the sweep run, not a param,
#: since the runs are the same on either.
TAG_EXECUTOR = "selfheal.executor"

#: Metrics logged for every configuration (the ones the issue names, plus diagnostics).
LOGGED_METRICS = (
    "f1",
    "precision",
    "recall",
    "mean_delay_s",
    "false_alarms_per_day",
    "operator_false_alarms",
    "nab_score",
    "average_precision",
    "threshold",
    "n_windows",
    "n_detected",
    "n_alarm_events",
    "n_test_rows",
    "fit_seconds",
    "score_seconds",
)


@dataclass
class Prepared:
    """Everything a configuration needs, computed once per sweep."""

    spec: LoadedSpec
    dataset: Dataset
    train: Frames
    test: Frames
    test_start: Any

    def slim(self) -> Prepared:
        """A copy without the raw points (workers need features only; spawn pickles what it sends)."""
        ds = self.dataset
        return replace(
            self,
            dataset=replace(ds, points=ds.points.clear()),
        )

    @property
    def test_incidents(self) -> pl.DataFrame:
        """Windows that reach into the test period (earlier ones cannot be detected there)."""
        return self.dataset.incidents.filter(pl.col("end") >= self.test_start)

    @property
    def test_negatives(self) -> pl.DataFrame:
        """Operators' negative windows that reach into the test period."""
        return self.dataset.negatives.filter(pl.col("end") >= self.test_start)


@dataclass
class ConfigResult:
    config: DetectorConfig
    metrics: dict[str, float] = field(default_factory=dict)
    detector: StreamDetector | None = None
    plots: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG
    per_series: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None
    run_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class SweepResult:
    spec_name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    metric: str
    data_fingerprint: str
    results: list[ConfigResult]
    best: ConfigResult | None
    seconds: float

    @property
    def best_run_id(self) -> str | None:
        return self.best.run_id if self.best else None

    def table(self) -> str:
        """Configurations ranked by the selection metric, one line each."""
        lines = [f"{'configuration':<48} {metric_header()}  run"]
        for r in self.results:
            mark = "*" if r is self.best else " "
            if not r.ok:
                lines.append(f"{mark}{r.config.label[:47]:<47}  FAILED: {r.error}")
                continue
            lines.append(f"{mark}{r.config.label[:47]:<47} {metric_cells(r.metrics)}  {r.run_id or '-'}")
        return "\n".join(lines)


#: The metrics a table of configurations or model versions shows, in this order.
TABLE_METRICS = ("f1", "precision", "recall", "false_alarms_per_day", "nab_score")


def metric_header() -> str:
    """Column titles of ``TABLE_METRICS``, each whole (a column is as wide as its name)."""
    return " ".join(f"{name:>{max(10, len(name))}}" for name in TABLE_METRICS)


def metric_cells(metrics: dict[str, float]) -> str:
    """The values under ``metric_header``; '-' where a metric is missing or not finite."""
    cells = []
    for name in TABLE_METRICS:
        value = metrics.get(name)
        text = f"{value:.3f}" if value is not None and math.isfinite(value) else "-"
        cells.append(f"{text:>{max(10, len(name))}}")
    return " ".join(cells)


# ------------------------------------------------------------------------------------ preparation


def prepare(loaded: LoadedSpec, store_path: str | Path) -> Prepared:
    """Load the data, compute the batch features of every service's role once, split them by time."""
    spec = loaded.spec
    shape = StreamDetector(loaded.stream_config(spec.configs()[0]))  # features depend on groups only
    dataset = load_dataset(spec.data, store_path, metrics=sorted(shape.metric_names))
    frames = shape.batch_features(dataset.points)
    if not any(len(f) for f in frames.values()):
        raise TrackingError(
            f"{loaded.path}: the feature spec produced no complete rows from {len(dataset.points)} points",
            hint="check that every service in data.services emits every metric the features use",
        )
    train, test, cut = split_by_time(frames, spec.evaluation.split)
    if spec.evaluation.exclude_incidents_from_training and len(dataset.incidents):
        margin = spec.evaluation.incident_margin
        train = {role: drop_incident_rows(f, dataset.incidents, margin) for role, f in train.items()}
    logger.info(
        "features: %d train rows, %d test rows (test from %s)",
        sum(map(len, train.values())),
        sum(map(len, test.values())),
        cut,
    )
    return Prepared(spec=loaded, dataset=dataset, train=train, test=test, test_start=cut)


def fit_config(config: DetectorConfig, prepared: Prepared) -> StreamDetector:
    """One configuration of the sweep fitted on the training rows: the artifact MLflow stores."""
    return StreamDetector(prepared.spec.stream_config(config)).fit(prepared.train)


def fit_spec(
    spec: str | Path | LoadedSpec, *, store_path: str | Path | None = None, config: int = 0
) -> StreamDetector:
    """One configuration of a spec fitted on its training rows, without MLflow: what a chaos run
    without a bundle scores with (a spec whose data is ``synth`` needs no store)."""
    loaded = spec if isinstance(spec, LoadedSpec) else load_spec(spec)
    prepared = prepare(loaded, store_path if store_path is not None else Path("telemetry.duckdb"))
    return fit_config(loaded.spec.configs()[config], prepared)


def evaluate_config(config: DetectorConfig, prepared: Prepared, *, plots: bool = False) -> ConfigResult:
    """Fit and judge one configuration (no MLflow; ``plots``: draw its figures too). Errors are
    captured, not raised."""
    spec = prepared.spec.spec
    result = ConfigResult(config=config)
    try:
        t0 = time.perf_counter()
        detector = fit_config(config, prepared)
        t1 = time.perf_counter()
        assessment = assess(
            detector,
            prepared.test,
            prepared.test_incidents,
            level=spec.evaluation.level,
            nab_profile=spec.evaluation.nab_profile,
            negatives=prepared.test_negatives,
        )
        t2 = time.perf_counter()
        result.metrics = {**assessment.metrics, "fit_seconds": t1 - t0, "score_seconds": t2 - t1}
        result.per_series = assessment.per_series
        result.detector = detector
        if plots:
            from engine.tracking.plots import figure_files

            result.plots = figure_files(assessment.series, detector.threshold_, title=config.label)
    except Exception as exc:  # one bad configuration must not sink the sweep
        logger.warning("configuration %s failed: %s", config.label, exc)
        logger.debug("%s", traceback.format_exc())
        result.error = f"{type(exc).__name__}: {exc}"
    return result


# ------------------------------------------------------------------------------------ workers


def _work(prepared: Prepared, config: DetectorConfig, _say: Say) -> ConfigResult:
    """One configuration in a worker (a pool's task: module level, so it pickles by reference)."""
    return evaluate_config(config, prepared, plots=True)


def default_workers(n_configs: int) -> int:
    """One worker per core, at most one per configuration."""
    return max(1, min(os.cpu_count() or 1, n_configs))


# ------------------------------------------------------------------------------------ the sweep


def run_experiment(
    spec: str | Path | LoadedSpec,
    *,
    home: Home,
    tracking_uri: str | None = None,
    workers: int | None = None,
    executor: str = "local",
    address: str | None = None,
    progress: bool = True,
    on_result: Callable[[ConfigResult], None] | None = None,
) -> SweepResult:
    """Run every configuration of ``spec`` and track the sweep in MLflow; return the ranking.

    ``executor`` says where the configurations are fitted (``engine.pools``): ``local`` processes
    (``workers`` of them; one runs them here) or ``ray`` (a Ray started here with ``workers`` CPUs,
    or the cluster at ``address``). The MLflow runs are the same on either.
    """
    import mlflow
    from tqdm import tqdm

    started = time.perf_counter()
    check(executor, address)
    loaded = spec if isinstance(spec, LoadedSpec) else load_spec(spec)
    s = loaded.spec
    configs = s.configs()
    uri = registry.resolve_tracking_uri(home, tracking_uri)
    prepared = prepare(loaded, home.telemetry_db)
    experiment_id = registry.ensure_experiment(s.experiment_name, tracking_uri=uri, home=home)
    n_workers = default_workers(len(configs)) if workers is None else max(1, workers)
    metric = s.evaluation.metric
    results: list[ConfigResult] = []

    shared = prepared.slim() if (executor != "local" or n_workers > 1) else prepared
    with (
        tempfile.TemporaryDirectory(prefix="selfheal-sweep-") as tmp,
        open_pool(executor, workers=n_workers, address=address) as pool,
    ):
        workdir = Path(tmp)
        stream = (result for _, result in pool.map(_work, shared, configs))
        registry.use_tracking(uri)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"sweep {s.name}") as parent:
            _log_parent_inputs(loaded, prepared, pool.workers, len(configs), workdir)
            mlflow.set_tag(TAG_EXECUTOR, pool.kind)
            bar = tqdm(
                total=len(configs),
                desc=f"sweep {s.name}",
                unit="config",
                file=sys.stderr,
                disable=not progress,
            )
            for result in stream:
                _log_child(result, loaded, prepared, experiment_id, workdir)
                results.append(result)
                if on_result is not None:
                    on_result(result)
                bar.set_postfix_str(
                    f"{result.config.detector} {metric}={result.metrics.get(metric, float('nan')):.3f}"
                )
                bar.update(1)
            bar.close()
            results.sort(key=lambda r: r.config.index)
            best = _best(results, metric, s.higher_is_better)
            _log_parent_outcome(results, best, metric, workdir)
            parent_id = parent.info.run_id
    if best is None:
        raise TrackingError(
            f"every configuration of {loaded.path} failed (first: {results[0].error})",
            hint=f"see the failed child runs of sweep {parent_id} in MLflow; fix the detector params",
        )
    return SweepResult(
        spec_name=s.name,
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent_id,
        metric=metric,
        data_fingerprint=prepared.dataset.fingerprint,
        results=results,
        best=best,
        seconds=time.perf_counter() - started,
    )


def _common_tags(loaded: LoadedSpec, prepared: Prepared) -> dict[str, str]:
    s = loaded.spec
    return {
        registry.TAG_SPEC: s.name,
        "selfheal.spec_sha256": loaded.sha256,
        registry.TAG_FINGERPRINT: prepared.dataset.fingerprint,
        registry.TAG_EVAL_KEY: loaded.evaluation_key,
        registry.TAG_METRIC: s.evaluation.metric,
        registry.TAG_HIGHER: "true" if s.higher_is_better else "false",
    }


def _log_parent_inputs(
    loaded: LoadedSpec, prepared: Prepared, workers: int, n_configs: int, workdir: Path
) -> None:
    import mlflow

    s = loaded.spec
    ds = prepared.dataset
    mlflow.set_tags({**_common_tags(loaded, prepared), registry.TAG_KIND: "sweep"})
    mlflow.log_params(
        {
            "spec": s.name,
            "n_configs": n_configs,
            "workers": workers,
            "metric": s.evaluation.metric,
            "level": s.evaluation.level,
            "test_start": str(prepared.test_start),
        }
    )
    folder = workdir / "inputs"
    folder.mkdir()
    (folder / loaded.path.name).write_text(loaded.text)
    fingerprint = {
        "fingerprint": ds.fingerprint,
        "evaluation_key": loaded.evaluation_key,
        "points": len(ds.points),
        "incidents": len(ds.incidents),
        "start": str(ds.start),
        "end": str(ds.end),
        "services": ds.services,
        "train_rows": sum(map(len, prepared.train.values())),
        "test_rows": sum(map(len, prepared.test.values())),
        "test_start": str(prepared.test_start),
        "data": s.data.model_dump(mode="json"),
    }
    (folder / "data_fingerprint.json").write_text(json.dumps(fingerprint, indent=2))
    mlflow.log_artifacts(str(folder), artifact_path="inputs")


def _log_child(
    result: ConfigResult, loaded: LoadedSpec, prepared: Prepared, experiment_id: str, workdir: Path
) -> None:
    import mlflow

    from engine.tracking.model import log_detector

    c = result.config
    run = mlflow.start_run(experiment_id=experiment_id, run_name=c.label[:240], nested=True)
    result.run_id = run.info.run_id
    status = "FAILED"
    try:
        mlflow.set_tags(
            {**_common_tags(loaded, prepared), registry.TAG_KIND: "config", registry.TAG_DETECTOR: c.detector}
        )
        params: dict[str, Any] = {"detector": c.detector, "config_index": c.index}
        params.update({f"param.{k}": _short(v) for k, v in c.params.items()})
        params["threshold_policy"] = json.dumps(loaded.spec.threshold.model_dump())
        params["calibration"] = str(loaded.spec.calibration.method)
        params["postprocess"] = json.dumps(loaded.spec.postprocess.model_dump(mode="json"))[:6000]
        params["groups"] = ",".join(["default"] + [g.name for g in loaded.spec.groups])
        mlflow.log_params(params)
        if not result.ok:
            mlflow.set_tag("selfheal.error", (result.error or "")[:4900])
            return
        mlflow.log_metrics({k: v for k, v in result.metrics.items() if k in LOGGED_METRICS and _finite(v)})
        folder = workdir / f"config-{c.index}"
        folder.mkdir()
        for name, png in result.plots.items():
            (folder / name).write_bytes(png)
            mlflow.log_artifact(str(folder / name), artifact_path="plots")
        mlflow.log_dict(result.per_series, "metrics_per_series.json")
        assert result.detector is not None
        model_uri = log_detector(
            result.detector,
            extra_metadata={"data_fingerprint": prepared.dataset.fingerprint, "spec": loaded.spec.name},
        )
        mlflow.set_tag(registry.TAG_MODEL_URI, model_uri)
        status = "FINISHED"
    finally:
        mlflow.end_run(status=status)


def _log_parent_outcome(
    results: list[ConfigResult], best: ConfigResult | None, metric: str, workdir: Path
) -> None:
    import mlflow

    rows = [
        {
            "config": r.config.label,
            "run_id": r.run_id,
            "error": r.error,
            **{k: r.metrics.get(k) for k in LOGGED_METRICS},
        }
        for r in results
    ]
    mlflow.log_dict({"metric": metric, "configs": rows}, "summary.json")
    mlflow.log_metric("n_failed", float(sum(not r.ok for r in results)))
    if best is not None and best.run_id:
        mlflow.set_tags(
            {registry.TAG_BEST_RUN: best.run_id, "selfheal.best_config": best.config.label[:4900]}
        )
        mlflow.log_metrics(
            {f"best_{k}": v for k, v in best.metrics.items() if k in LOGGED_METRICS and _finite(v)}
        )


def _best(results: list[ConfigResult], metric: str, higher: bool) -> ConfigResult | None:
    ok = [r for r in results if r.ok and _finite(r.metrics.get(metric))]
    if not ok:
        ok = [r for r in results if r.ok]
        return ok[0] if ok else None
    sign = 1.0 if higher else -1.0
    return max(ok, key=lambda r: (sign * r.metrics[metric], -r.config.index))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text[:500]
