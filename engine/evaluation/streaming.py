"""Streaming replay: run a detector configuration over NAB-layout series exactly as the engine would.

The engine's online scoring path for one series is ``StreamScorer``: points arrive one at a time;
the first ``warmup_points`` are only buffered (they decide the resample interval and whether the
series is seasonal), then features come from ``engine.features.OnlineFeatures``, raw scores from a
registered ``Detector`` that is refitted every ``refit.every`` rows on the last ``refit.window``
*past* rows, and the final [0, 1] score from ``engine.detectors.likelihood.ScorePostprocessor``.
Nothing ever sees a point later than the row it scores.

``run_series``/``run_corpus`` replay NAB files through ``StreamScorer.push_many``, which processes
the rows of many points at once (one ``fit`` per refit, one ``score`` call per refit segment).
That micro-batching does not change a single number: the test suite checks it against one
``push`` per point.

A detector configuration (``DetectorSpec``) is a YAML or JSON file; ``--detector`` takes a path or
the name of a file in ``experiments/nab/``; ``DEFAULT_SPEC`` is the best configuration we measured
(``experiments/nab/default.yaml`` is the same document).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.errors import ConfigError, SpecError
from engine.evaluation.nab import NabCorpus, NabReport, NabSeries, score_results, write_results
from engine.shipped import shipped
from engine.specs import expect_mapping, load_yaml, problems_from

logger = logging.getLogger(__name__)

SPEC_DIR = shipped("experiments") / "nab"
NAB_EXPERIMENT = "nab"

# --------------------------------------------------------------------------------- the spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeasonalSpec(_Strict):
    """Add ``diff(lag = period)`` when the warm-up shows the series repeats with that period.

    The column is kept when var(x_t - x_{t-lag}) < ``gate`` * var(x) over the warm-up rows, i.e. the
    previous period explains most of the variance; otherwise it would only add noise.
    """

    period: float = Field(default=86400.0, gt=0, description="seconds (accepts 1d, 12h, ...)")
    gate: float = Field(default=0.3, gt=0)

    @field_validator("period", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        from engine.features import parse_duration

        return parse_duration(value)


class FeaturesSpec(_Strict):
    """Transforms of the series' value, in engine.features syntax (windows and lags in buckets)."""

    transforms: list[Any] = Field(default_factory=lambda: ["raw"], min_length=1)
    seasonal: SeasonalSpec | None = SeasonalSpec()


class DetectorPart(_Strict):
    name: str = "NabZScore"
    params: dict[str, Any] = Field(default_factory=dict)


class RefitSpec(_Strict):
    """Refit the detector every ``every`` rows on the last ``window`` rows before the row scored."""

    every: int = Field(default=1, ge=1)
    window: int = Field(default=1000, ge=2)
    min_rows: int = Field(default=20, ge=2, description="rows needed before the first fit (score 0 before)")


class PostprocessSpec(_Strict):
    squash: Literal["clip", "ratio"] = "clip"
    average: int = Field(default=20, ge=1)
    history: int = Field(default=8640, ge=2)
    reestimate: int = Field(default=100, ge=1)
    spatial_tolerance: float | None = Field(default=0.05, ge=0)
    suppress_rows: int = Field(default=50, ge=0)
    suppress_level: float = Field(default=0.5, ge=0, le=1)
    suppress_cap: float = Field(default=0.3, ge=0, le=1)


class DetectorSpec(_Strict):
    """A whole detector configuration for streaming evaluation (and for the engine)."""

    name: str = Field(default="selfheal", pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
    description: str = ""
    features: FeaturesSpec = FeaturesSpec()
    detector: DetectorPart = DetectorPart()
    refit: RefitSpec = RefitSpec()
    postprocess: PostprocessSpec = PostprocessSpec()

    def flat_params(self) -> dict[str, str]:
        """``section.key -> value`` strings for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = json.dumps(value) if not isinstance(value, str) else value

        walk("", self.model_dump(mode="json"))
        return out


DEFAULT_SPEC = DetectorSpec(
    name="selfheal",
    description="rolling z-score (value, and the same time yesterday when the warm-up is seasonal) "
    "-> anomaly likelihood -> spatial rule -> repeat suppression",
    detector=DetectorPart(name="NabZScore", params={"zscale": 4.0}),
)
"""The best configuration we measured on the NAB development subset (see the README)."""


def parse_detector_spec(data: Any, *, source: str = "<detector spec>") -> DetectorSpec:
    """Validate a spec document; every problem is reported with its path."""
    if not isinstance(data, dict):
        raise SpecError(expect_mapping(data, source, hint="start with `name:`"))
    try:
        spec = DetectorSpec.model_validate(data)
    except ValidationError as exc:
        problems = problems_from(exc, file=source, model=DetectorSpec)
        raise SpecError(problems, hint=f"fix {source}; see experiments/nab/default.yaml") from exc
    _feature_spec(spec, interval=1.0, lag=None, source=source)  # transforms are valid feature transforms
    from engine.detectors import make_detector

    make_detector(spec.detector.name, spec.detector.params)  # unknown names fail now, not mid-run
    return spec


def load_detector_spec(ref: str | os.PathLike[str] | None) -> DetectorSpec:
    """A spec from a YAML/JSON file path, or a name in experiments/nab/, or the default (None)."""
    if ref is None:
        return DEFAULT_SPEC
    path = Path(ref)
    if not path.is_file():
        candidates = [SPEC_DIR / f"{ref}.yaml", SPEC_DIR / f"{ref}.yml", SPEC_DIR / f"{ref}.json"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            known = sorted(p.stem for p in SPEC_DIR.glob("*.y*ml")) if SPEC_DIR.is_dir() else []
            raise ConfigError(
                f"detector spec {str(ref)!r} is neither a file nor a spec in {SPEC_DIR}",
                hint=f"pass a YAML/JSON file or one of {known}",
            )
        path = found[0]
    data = load_yaml(path, hint="fix the file syntax")  # JSON is YAML: one loader, one set of rules
    return parse_detector_spec(data, source=str(path))


# --------------------------------------------------------------------------------- one series

METRIC = "value"


@dataclass(frozen=True)
class SeriesPlan:
    """What the warm-up decided for one series."""

    interval: float  # bucket width, seconds: the median step of the warm-up timestamps
    lag: int | None  # seasonal diff lag in buckets, None when not seasonal (or not enough warm-up)


def _feature_spec(
    spec: DetectorSpec, *, interval: float, lag: int | None, source: str = "<detector spec>"
) -> Any:
    from engine.features import FeatureSpec

    transforms = list(spec.features.transforms)
    if lag is not None:
        transforms.append({"kind": "diff", "lag": lag, "name": "seasonal_diff"})
    return FeatureSpec.parse(
        {"interval": interval, "metrics": {METRIC: {"transforms": transforms}}},
        source=source,
        prefix="features",
    )


def plan_series(spec: DetectorSpec, ts: np.ndarray, values: np.ndarray) -> SeriesPlan:
    """Decide interval and seasonality from warm-up points only (epoch seconds, values)."""
    steps = np.diff(ts)
    steps = steps[steps > 0]
    interval = float(max(1, round(float(np.median(steps))))) if len(steps) else 1.0
    seasonal = spec.features.seasonal
    if seasonal is None:
        return SeriesPlan(interval, None)
    lag = round(seasonal.period / interval)
    buckets = np.floor(ts / interval)
    # enough warm-up to compare a period with the previous one (plus a little)
    if lag < 1 or len(np.unique(buckets)) < lag + 10:
        return SeriesPlan(interval, None)
    # the gate on bucket values: var(x_t - x_{t-lag}) < gate * var(x)
    _, first = np.unique(buckets, return_index=True)
    x = values[first]
    diff = x[lag:] - x[:-lag]
    var_x = float(np.var(x))
    keep = var_x > 0 and float(np.var(diff)) < seasonal.gate * var_x
    return SeriesPlan(interval, lag if keep else None)


@dataclass(frozen=True)
class Scored:
    """One scored feature row: bucket start (epoch s), bucket index, score in [0, 1]."""

    ts: float
    bucket: int
    score: float


class StreamScorer:
    """The online scoring path of one series: ``push(ts, value)`` -> scores of rows that closed.

    ``warmup_points`` points are buffered before anything is decided (NAB: the probationary
    period); their rows get score 0. Memory is bounded: the feature histories, the last
    ``refit.window`` feature rows, and the likelihood's history.
    """

    def __init__(self, spec: DetectorSpec, warmup_points: int, *, service: str = "series") -> None:
        from engine.detectors.likelihood import PostprocessParams, ScorePostprocessor

        self.spec = spec
        self.warmup_points = max(int(warmup_points), 2)
        self.service = service
        self.plan: SeriesPlan | None = None
        self._buffer_ts: list[float] = []
        self._buffer_values: list[float] = []
        self._online: Any = None
        self._rows_seen = 0
        self._fitted_at: int | None = None
        self._detector: Any = None
        self._value_col = 0
        self._last_warmup_bucket = 0  # rows of buckets up to this one hold warm-up points: score 0
        self._names: list[str] = []
        self._history: np.ndarray | None = None
        self._n_hist = 0
        self._post = ScorePostprocessor(PostprocessParams(**spec.postprocess.model_dump()))

    # -- public ------------------------------------------------------------------------------

    def push(self, ts: float, value: float) -> list[Scored]:
        """One point (epoch seconds, value): scores of the rows it closed, oldest first."""
        if self.plan is None:
            self._buffer_ts.append(float(ts))
            self._buffer_values.append(float(value))
            if len(self._buffer_ts) < self.warmup_points:
                return []
            return self._start()
        return self._process(self._online.push(float(ts), self.service, METRIC, float(value)))

    def push_many(
        self, ts: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray
    ) -> list[Scored]:
        """Many points in time order; exactly what the same ``push`` calls would return."""
        ts = np.asarray(ts, dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)
        out: list[Scored] = []
        start = 0
        if self.plan is None:
            need = self.warmup_points - len(self._buffer_ts)
            head = min(need, len(ts))
            self._buffer_ts.extend(ts[:head].tolist())
            self._buffer_values.extend(values[:head].tolist())
            start = head
            if len(self._buffer_ts) < self.warmup_points:
                return out
            out.extend(self._start())
        if start < len(ts):
            rows = self._online.push_many(
                ts[start:].tolist(),
                [self.service] * (len(ts) - start),
                [METRIC] * (len(ts) - start),
                values[start:].tolist(),
            )
            out.extend(self._process(rows))
        return out

    def flush(self) -> list[Scored]:
        """End of stream: close the open bucket (and finish a warm-up that never completed)."""
        out: list[Scored] = []
        if self.plan is None:
            if not self._buffer_ts:
                return out
            out.extend(self._start())
        out.extend(self._process(self._online.flush()))
        return out

    @property
    def feature_names(self) -> list[str]:
        return list(self._names)

    # -- internals ---------------------------------------------------------------------------

    def _start(self) -> list[Scored]:
        from engine.features import OnlineFeatures

        ts = np.asarray(self._buffer_ts)
        values = np.asarray(self._buffer_values)
        self.plan = plan_series(self.spec, ts, values)
        self._last_warmup_bucket = int(ts[-1] // self.plan.interval)
        fspec = _feature_spec(self.spec, interval=self.plan.interval, lag=self.plan.lag)
        self._online = OnlineFeatures(fspec)
        self._names = names = fspec.feature_names
        raw_name = f"{METRIC}__raw"
        if self.spec.postprocess.spatial_tolerance is not None and raw_name not in names:
            raise ConfigError(
                "postprocess.spatial_tolerance needs the raw value among features.transforms",
                hint="add `raw` to features.transforms or set spatial_tolerance: null",
            )
        self._value_col = names.index(raw_name) if raw_name in names else 0
        self._history = np.empty((2 * self.spec.refit.window, len(names)), dtype=np.float64)
        rows = self._online.push_many(
            ts.tolist(), [self.service] * len(ts), [METRIC] * len(ts), values.tolist()
        )
        self._buffer_ts, self._buffer_values = [], []
        logger.debug("%s: plan %s, features %s", self.service, self.plan, names)
        return self._process(rows)

    def _append_history(self, block: np.ndarray) -> None:
        """Keep the last ``refit.window`` rows in a buffer of twice that size (one copy per window rows)."""
        hist = self._history
        assert hist is not None
        window = self.spec.refit.window
        for start in range(0, len(block), window):
            part = block[start : start + window]
            if self._n_hist + len(part) > len(hist):
                hist[:window] = hist[self._n_hist - window : self._n_hist]
                self._n_hist = window
            hist[self._n_hist : self._n_hist + len(part)] = part
            self._n_hist += len(part)

    def _fit(self) -> None:
        from engine.detectors import make_detector

        assert self._history is not None
        X = self._history[max(0, self._n_hist - self.spec.refit.window) : self._n_hist]
        if self._detector is None:
            self._detector = make_detector(self.spec.detector.name, self.spec.detector.params)
        self._detector.fit(X, feature_names=self._names)
        self._fitted_at = self._rows_seen

    def _process(self, rows: list[Any]) -> list[Scored]:
        if not rows:
            return []
        X = np.array([r.values for r in rows], dtype=np.float64)
        raw = np.zeros(len(rows))
        refit = self.spec.refit
        i = 0
        while i < len(rows):
            # rows before a detector exists score 0 until min_rows past rows are available
            if self._fitted_at is None and self._rows_seen < refit.min_rows:
                take = min(len(rows) - i, refit.min_rows - self._rows_seen)
                self._append_history(X[i : i + take])
                self._rows_seen += take
                i += take
                continue
            if self._fitted_at is None or self._rows_seen - self._fitted_at >= refit.every:
                self._fit()
            assert self._fitted_at is not None
            take = min(len(rows) - i, refit.every - (self._rows_seen - self._fitted_at))
            raw[i : i + take] = self._detector.score(X[i : i + take], feature_names=self._names)
            self._append_history(X[i : i + take])
            self._rows_seen += take
            i += take
        interval = self.plan.interval if self.plan else 1.0
        post = self._post.update
        col = self._value_col
        last_warm = self._last_warmup_bucket
        out = []
        for k, r in enumerate(rows):
            bucket = round(r.ts / interval)
            score = post(float(raw[k]), float(X[k, col]), warmup=bucket <= last_warm)
            out.append(Scored(r.ts, bucket, score))
        return out


def epoch_seconds(stamps: np.ndarray) -> np.ndarray:
    """datetime64 (naive UTC) -> float epoch seconds, the engine's per-point time type."""
    return stamps.astype("datetime64[us]").astype(np.int64) / 1e6


def scores_per_row(series_ts: np.ndarray, scored: Sequence[Scored], interval: float) -> np.ndarray:
    """Map bucket scores back to data rows (a row takes its bucket's score; 0 where none)."""
    by_bucket = {s.bucket: s.score for s in scored}
    buckets = np.floor(series_ts / interval).astype(np.int64)
    return np.fromiter((by_bucket.get(int(b), 0.0) for b in buckets), dtype=np.float64, count=len(buckets))


def run_series(spec: DetectorSpec, series: NabSeries, *, chunk: int | None = None) -> np.ndarray:
    """Replay one NAB file through ``StreamScorer``; one score in [0, 1] per data row."""
    ts = epoch_seconds(series.timestamps)
    scorer = StreamScorer(spec, warmup_points=series.probation, service=series.key)
    scored: list[Scored] = []
    step = chunk or len(ts) or 1
    for start in range(0, len(ts), step):
        scored.extend(scorer.push_many(ts[start : start + step], series.values[start : start + step]))
    scored.extend(scorer.flush())
    assert scorer.plan is not None
    return np.clip(scores_per_row(ts, scored, scorer.plan.interval), 0.0, 1.0)


# --------------------------------------------------------------------------------- a corpus


@dataclass(frozen=True)
class RunResult:
    """Scores, NAB report and throughput of one corpus run."""

    detector: str
    scores: dict[str, np.ndarray]
    report: NabReport
    n_points: int
    seconds: float
    out: Path | None

    @property
    def points_per_second(self) -> float:
        return self.n_points / self.seconds if self.seconds > 0 else math.inf


def _run_one(args: tuple[DetectorSpec, NabSeries]) -> tuple[str, np.ndarray]:
    spec, series = args
    return series.key, run_series(spec, series)


def run_corpus(
    corpus: NabCorpus,
    spec: DetectorSpec,
    out: Path | str | None = None,
    *,
    workers: int = 1,
    progress: bool = False,
) -> RunResult:
    """Run ``spec`` over every series, write NAB results under ``out`` (if given), score them."""
    from tqdm import tqdm

    started = time.perf_counter()
    items = [(spec, s) for s in corpus.series.values()]
    bar = tqdm(total=len(items), desc=f"nab run {spec.name}", unit="file", disable=not progress, file=None)
    scores: dict[str, np.ndarray] = {}
    try:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for key, arr in pool.map(_run_one, items):
                    scores[key] = arr
                    bar.update()
        else:
            for item in items:
                key, arr = _run_one(item)
                scores[key] = arr
                bar.update()
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    if out is not None:
        for key, series in corpus.series.items():
            write_results(out, spec.name, series, scores[key])
    report = score_results(corpus, scores)
    return RunResult(
        spec.name, scores, report, corpus.n_points, seconds, Path(out) if out is not None else None
    )


def log_run(
    result: RunResult, spec: DetectorSpec, *, tracking_uri: str, corpus: Path, out: Path | None
) -> str:
    """Log one corpus run to MLflow (experiment "nab"): spec as params, scores as metrics."""
    import mlflow

    from engine.errors import TrackingError
    from engine.evaluation.nab import format_report
    from engine.home import use_tracking

    try:
        use_tracking(tracking_uri)
        mlflow.set_experiment(NAB_EXPERIMENT)
        with mlflow.start_run(run_name=spec.name) as run:
            mlflow.set_tags({"corpus": str(corpus), "results": str(out or ""), "kind": "nab-streaming"})
            mlflow.log_params({k: v[:6000] for k, v in spec.flat_params().items()})
            metrics = {k: float(v) for k, v in result.report.as_dict().items()}
            metrics.update(
                {
                    "points": float(result.n_points),
                    "seconds": result.seconds,
                    "points_per_s": result.points_per_second,
                }
            )
            mlflow.log_metrics({re.sub(r"[^A-Za-z0-9_./ -]", "_", k): v for k, v in metrics.items()})
            mlflow.log_text(spec.model_dump_json(indent=2), "detector_spec.json")
            mlflow.log_text(format_report(result.report), "nab_report.txt")
            return run.info.run_id
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"MLflow at {tracking_uri}: {exc}", hint="check --tracking-uri") from exc
