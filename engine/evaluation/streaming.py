"""``selfheal nab run``: NAB files replayed through the engine's own detector, one point at a time.

Each file is a stream of one series scored by ``engine.detectors.stream.StreamDetector``, the class
the engine runs: points arrive one at a time; the first ``probation`` points are only buffered
(they decide the resample interval and whether the series is seasonal), then features come from
``engine.features.OnlineFeatures``, raw scores from a registered ``Detector`` refitted every
``refit.every`` rows on the last ``refit.window`` *past* rows, and the final [0, 1] score from the
detector's post-processing (likelihood, spatial rule, suppression). Nothing ever sees a point later
than the row it scores.

A NAB detector configuration (``DetectorSpec``) is a YAML or JSON file in NAB terms (features of
the series' value, the detector, refit and post-processing); ``stream_config`` turns it into the
stream detector's ``StreamConfig`` (one adaptive group for every series). ``--detector`` takes a
path or the name of a file in ``experiments/nab/``; ``DEFAULT_SPEC`` is the best configuration we
measured (``experiments/nab/default.yaml`` is the same document).
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
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.detectors.stream import Scored, StreamDetector, adaptive_spec
from engine.detectors.stream_config import (
    AdaptiveFeatures,
    GroupConfig,
    ModelConfig,
    PointsConfig,
    PostprocessConfig,
    RefitConfig,
    StreamConfig,
    ThresholdConfig,
)
from engine.errors import ConfigError, Problem, SpecError
from engine.evaluation.nab import NabCorpus, NabReport, NabSeries, score_results, write_results
from engine.shipped import shipped
from engine.specs import expect_mapping, load_yaml, problems_from

logger = logging.getLogger(__name__)

SPEC_DIR = shipped("experiments") / "nab"
NAB_EXPERIMENT = "nab"
METRIC = "value"
GROUP = "series"
NAB_THRESHOLD = 0.5
"""The detector's own alarm line for NAB series (``nab run`` scores with NAB's optimised threshold)."""

# --------------------------------------------------------------------------------- the spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectorPart(_Strict):
    name: str = "NabZScore"
    params: dict[str, Any] = Field(default_factory=dict)


class NabPostprocess(PostprocessConfig):
    """The stream detector's post-processing with Numenta-style defaults: the likelihood on, the
    spatial rule on the raw value at 5% of the range, one alarm per 50 rows."""

    likelihood: bool = True
    spatial_tolerance: float | None = Field(default=0.05, ge=0)
    spatial_columns: list[str] | None = Field(default_factory=lambda: [f"{METRIC}__raw"])
    suppress_rows: int = Field(default=50, ge=0)


class DetectorSpec(_Strict):
    """A whole detector configuration for NAB series (and for the engine: ``stream_config``)."""

    name: str = Field(default="selfheal", pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
    description: str = ""
    features: AdaptiveFeatures = AdaptiveFeatures()
    detector: DetectorPart = DetectorPart()
    refit: RefitConfig = RefitConfig()
    postprocess: NabPostprocess = NabPostprocess()
    points: PointsConfig | None = None  # point detectors beside the model (on value__raw by default)

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


def stream_config(spec: DetectorSpec) -> StreamConfig:
    """The stream detector a NAB spec describes: one adaptive group, a model refitted per series."""
    return StreamConfig(
        name=spec.name,
        groups=[GroupConfig(name=GROUP, services=["*"], features=spec.features)],
        model=ModelConfig.model_validate({"class": spec.detector.name, "params": spec.detector.params}),
        refit=spec.refit,
        postprocess=spec.postprocess,
        points=spec.points,
        threshold=ThresholdConfig(kind="fixed", value=NAB_THRESHOLD),
    )


def nab_detector(spec: DetectorSpec) -> StreamDetector:
    """The stream detector of ``spec`` (nothing to fit: each series refits its own model)."""
    return StreamDetector(stream_config(spec))


def parse_detector_spec(data: Any, *, source: str = "<detector spec>") -> DetectorSpec:
    """Validate a spec document; every problem is reported with its path."""
    if not isinstance(data, dict):
        raise SpecError(expect_mapping(data, source, hint="start with `name:`"))
    try:
        spec = DetectorSpec.model_validate(data)
    except ValidationError as exc:
        problems = problems_from(exc, file=source, model=DetectorSpec)
        raise SpecError(problems, hint=f"fix {source}; see experiments/nab/default.yaml") from exc
    # transforms are valid feature transforms, and the spatial rule watches a column they compute
    names = adaptive_spec(spec.features, interval=1.0, lag=None, source=source).feature_names
    post = spec.postprocess
    if post.spatial_tolerance is not None and not nab_detector(spec).spatial_columns(names):
        raise SpecError(
            [
                Problem(
                    source,
                    "postprocess.spatial_columns",
                    f"{post.spatial_columns} match no feature of {names}",
                    "add `raw` to features.transforms or set postprocess.spatial_tolerance: null",
                )
            ]
        )
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


def epoch_seconds(stamps: np.ndarray) -> np.ndarray:
    """datetime64 (naive UTC) -> float epoch seconds, the engine's per-point time type."""
    return stamps.astype("datetime64[us]").astype(np.int64) / 1e6


def scores_per_row(series_ts: np.ndarray, scored: Sequence[Scored], interval: float) -> np.ndarray:
    """Map bucket scores back to data rows (a row takes its bucket's score; 0 where none)."""
    by_bucket = {round(s.ts / interval): s.score for s in scored}
    buckets = np.floor(series_ts / interval).astype(np.int64)
    return np.fromiter((by_bucket.get(int(b), 0.0) for b in buckets), dtype=np.float64, count=len(buckets))


def run_series(
    spec: DetectorSpec | StreamDetector, series: NabSeries, *, chunk: int | None = None
) -> np.ndarray:
    """Replay one NAB file through the stream detector; one score in [0, 1] per data row."""
    det = spec if isinstance(spec, StreamDetector) else nab_detector(spec)
    ts = epoch_seconds(series.timestamps)
    key = series.key
    states = {key: det.new_state(key, warmup_points=series.probation)}
    scored: list[Scored] = []
    step = chunk or len(ts) or 1
    for start in range(0, len(ts), step):
        part_ts = ts[start : start + step].tolist()
        part_values = series.values[start : start + step].tolist()
        points = zip(part_ts, [key] * len(part_ts), [METRIC] * len(part_ts), part_values, strict=True)
        scored.extend(det.score(points, states))
    scored.extend(det.flush(states))
    plan = states[key].plan
    assert plan is not None
    return np.clip(scores_per_row(ts, scored, plan[0]), 0.0, 1.0)


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
