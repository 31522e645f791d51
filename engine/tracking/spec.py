"""Experiment specs (``experiments/*.yaml``): which data, which features, which detectors, how judged.

A spec is the reproducible description of a sweep. It is validated completely at load, before any
data is read or any run is created, and every problem is reported at once with the file, the path
inside it and a hint, because a sweep that dies on its seventh configuration wastes the first six.

Detector grids separate ``params`` (fixed values, passed as they are, lists included) from ``grid``
(lists of values to sweep); the configurations are the cartesian product of each grid.

Each configuration is one stream detector (``engine.detectors.stream``): ``features`` is the
feature spec of the metrics every service emits (the default metric group), ``groups`` adds
metric groups for the services that emit more (vector-db's retrieval quality): a service is scored
on every group its globs match, each group by its own model; ``postprocess`` is the stateful steps
after the model, ``points`` the point detectors beside it (``engine.detectors.pointwise``) and
``threshold`` the alarm line on the final scores. The model slot takes
stateless detectors only (it is fitted once and shared by every service of a group); a detector
that keeps state between rows is refused at load, naming the field.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.detectors.spec_problems import detector_param_problems
from engine.detectors.stream_config import PointsConfig, PostprocessConfig, ThresholdConfig
from engine.errors import DetectorError, Problem, SpecError
from engine.specs import did_you_mean, expect_mapping, load_yaml, problems_from

logger = logging.getLogger(__name__)

MAX_CONFIGS = 256

#: Metrics a spec can select the best configuration by, and whether higher is better.
SELECTION_METRICS: dict[str, bool] = {
    "f1": True,
    "precision": True,
    "recall": True,
    "nab_score": True,
    "average_precision": True,
    "mean_delay_s": False,
    "false_alarms_per_day": False,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SynthSource(_Strict):
    """Telemetry of the synthetic platform (``selfheal synth``), generated in memory: the data of
    the platform model the chaos runs simulate, reproducible from its seed."""

    days: float = Field(default=2.0, gt=0, le=60)
    seed: int = 0
    start: datetime = datetime(2025, 12, 1)


class DataSpec(_Strict):
    """Which telemetry: an SQL query over the store, or a time range with services and metrics."""

    query: str | None = Field(
        default=None, description="SELECT over `telemetry` returning ts, service, metric, value"
    )
    start: datetime | None = None
    end: datetime | None = None
    last_days: float | None = Field(default=None, gt=0, description="the most recent N days in the store")
    services: list[str] | None = None
    metrics: list[str] | None = None
    synth: SynthSource | None = Field(
        default=None, description="generate the data with the synthetic platform instead of reading the store"
    )

    @model_validator(mode="after")
    def _one_way_to_say_when(self) -> DataSpec:
        if self.synth is not None and (
            self.query is not None
            or self.start is not None
            or self.end is not None
            or self.last_days is not None
        ):
            raise ValueError("synth generates its own time range: drop query, start, end and last_days")
        if self.last_days is not None and (self.start is not None or self.end is not None):
            raise ValueError("give either last_days or start/end, not both")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError("start must be before end")
        if self.query is not None and not re.match(r"(?is)^\s*(select|with)\b", self.query):
            raise ValueError("query must be a SELECT (or WITH ... SELECT) over the telemetry table")
        return self


class DetectorGrid(_Strict):
    """One detector class: fixed ``params`` plus a ``grid`` of values to sweep."""

    class_: str = Field(alias="class", min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("grid")
    @classmethod
    def _non_empty_lists(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [k for k, v in grid.items() if not v]
        if empty:
            raise ValueError(f"grid values must be non-empty lists (empty: {', '.join(empty)})")
        return grid

    @model_validator(mode="after")
    def _no_overlap(self) -> DetectorGrid:
        both = sorted(set(self.params) & set(self.grid))
        if both:
            raise ValueError(f"parameter(s) {', '.join(both)} appear in both params and grid")
        return self


ThresholdSpec = ThresholdConfig
"""How calibrated scores become alarms (the stream detector's own ``ThresholdConfig``, declared once)."""


class CalibrationSpec(_Strict):
    method: str | None = Field(default=None, description="ScoreCalibrator method; None = its default")


class SplitSpec(_Strict):
    """Train on the earlier part, test on the later part (never the other way: no look-ahead)."""

    train_fraction: float | None = Field(default=None, gt=0, lt=1)
    test_start: datetime | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SplitSpec:
        if (self.train_fraction is None) == (self.test_start is None):
            raise ValueError("give exactly one of train_fraction or test_start")
        return self


class EvaluationSpec(_Strict):
    split: SplitSpec = Field(default_factory=lambda: SplitSpec(train_fraction=0.5))
    metric: str = "f1"
    level: Literal["service", "platform"] = "service"
    nab_profile: str = "standard"
    exclude_incidents_from_training: bool = True
    incident_margin: float = Field(
        default=0.0,
        ge=0,
        description="also drop training rows this close to an incident (cascades, recovery)",
    )

    @field_validator("incident_margin", mode="before")
    @classmethod
    def _margin(cls, value: Any) -> float:
        from engine.features import parse_duration

        return parse_duration(value)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in SELECTION_METRICS:
            close = did_you_mean(metric, SELECTION_METRICS)
            tip = f" ({close})" if close else ""
            raise ValueError(f"unknown metric '{metric}'{tip}; choose one of {', '.join(SELECTION_METRICS)}")
        return metric


class TrackingSpec(_Strict):
    experiment: str | None = Field(default=None, description="MLflow experiment; default: the spec name")
    model_name: str | None = Field(default=None, description="registered model name promotion uses")


class GroupSpec(_Strict):
    """A metric group: services (names or globs) that emit these metrics, also scored on them."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    services: list[str] = Field(min_length=1)
    features: dict[str, Any]


class ExperimentSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    features: dict[str, Any]
    groups: list[GroupSpec] = Field(default_factory=list)
    detectors: list[DetectorGrid] = Field(min_length=1)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    points: PointsConfig | None = None
    threshold: ThresholdSpec = Field(default_factory=ThresholdSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def higher_is_better(self) -> bool:
        return SELECTION_METRICS[self.evaluation.metric]

    def configs(self) -> list[DetectorConfig]:
        """The cartesian product of every detector's grid, in file order."""
        out: list[DetectorConfig] = []
        for grid in self.detectors:
            keys = sorted(grid.grid)
            for values in itertools.product(*(grid.grid[k] for k in keys)):
                params = {**grid.params, **dict(zip(keys, values, strict=True))}
                out.append(DetectorConfig(index=len(out), detector=grid.class_, params=params))
        return out


@dataclass(frozen=True)
class DetectorConfig:
    """One point of the sweep."""

    index: int
    detector: str
    params: dict[str, Any]

    @property
    def label(self) -> str:
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.detector}({inner})"


DEFAULT_GROUP = "default"
"""The metric group of every service (its features are the spec's ``features``)."""


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec with where it came from and a hash of its bytes (logged with every run)."""

    spec: ExperimentSpec
    path: Path
    text: str
    feature_spec: Any  # engine.features.FeatureSpec of the default group
    group_specs: tuple[Any, ...] = ()  # engine.features.FeatureSpec of each entry of `groups`

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def stream_config(self, config: DetectorConfig) -> Any:
        """The stream detector (``engine.detectors.stream_config.StreamConfig``) of one configuration."""
        from engine.detectors.stream_config import GroupConfig, ModelConfig, StreamConfig, ThresholdConfig

        s = self.spec
        groups = [GroupConfig(name=DEFAULT_GROUP, services=["*"], features=self.feature_spec)]
        groups += [
            GroupConfig(name=g.name, services=g.services, features=fs)
            for g, fs in zip(s.groups, self.group_specs, strict=True)
        ]
        return StreamConfig(
            name=s.name,
            groups=groups,
            model=ModelConfig.model_validate({"class": config.detector, "params": config.params}),
            calibration=s.calibration.method or "ecdf",
            postprocess=s.postprocess,
            points=s.points,
            threshold=ThresholdConfig.model_validate(s.threshold.model_dump()),
            seed=s.seed,
        )

    @property
    def evaluation_key(self) -> str:
        """What two runs must share to be compared: data selection, split, level and threshold policy.

        The detector grid and the spec's name are left out on purpose: a challenger from a different
        sweep may compete with the champion as long as it was judged on the same evaluation.
        """
        s = self.spec
        payload = {
            # fields added later stay out of the key at their default, so older runs stay comparable
            "data": s.data.model_dump(mode="json", exclude=set() if s.data.synth else {"synth"}),
            "features": self.feature_spec.model_dump(mode="json"),
            "evaluation": s.evaluation.model_dump(
                mode="json", exclude=set() if s.evaluation.incident_margin else {"incident_margin"}
            ),
        }
        if self.group_specs:  # which services get which features decides the rows judged
            payload["groups"] = [
                {"name": g.name, "services": g.services, "features": fs.model_dump(mode="json")}
                for g, fs in zip(s.groups, self.group_specs, strict=True)
            ]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Loading and reporting every problem at once


def load_spec(path: str | Path) -> LoadedSpec:
    """Read and validate an experiment spec; raise SpecError listing every problem found."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise SpecError(
            [Problem(file, "", "no such file", "pass a path to an experiments/*.yaml file")],
            hint="ls experiments/",
        )
    data = path.read_bytes()
    raw = load_yaml(path, data, hint="fix the YAML syntax")
    return validate_spec(raw, file=file, text=data.decode("utf-8"), path=path)


def validate_spec(
    raw: Any, *, file: str = "<spec>", text: str | None = None, path: Path | None = None
) -> LoadedSpec:
    """Validate an already-parsed spec (a dict); every problem is collected before raising."""
    if not isinstance(raw, dict):
        raise SpecError(expect_mapping(raw, file, hint="start with `name:`"))
    problems: list[Problem] = []
    spec: ExperimentSpec | None = None
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        problems.extend(problems_from(exc, file=file, model=ExperimentSpec))

    feature_spec = None
    if isinstance(raw.get("features"), dict):
        feature_spec, feature_problems = _validate_features(raw["features"], file)
        problems.extend(feature_problems)
    group_specs: list[Any] = []
    for i, group in enumerate(raw.get("groups") or []):
        if isinstance(group, dict) and isinstance(group.get("features"), dict):
            group_spec, group_problems = _validate_features(group["features"], file, f"groups[{i}].features")
            problems.extend(group_problems)
            group_specs.append(group_spec)
    problems.extend(_check_detectors(raw.get("detectors"), file))
    problems.extend(_check_detector_params(raw.get("detectors"), file))
    problems.extend(_check_stateless(raw.get("detectors"), file))
    # counted, not enumerated: a 1 kB grid of 6 keys x 30 values is 729 million configurations
    n_configs = sum(math.prod(len(v) for v in grid.grid.values()) for grid in spec.detectors) if spec else 0
    if n_configs > MAX_CONFIGS:
        problems.append(
            Problem(
                file,
                "detectors",
                f"the grid expands to {n_configs:,} configurations (limit {MAX_CONFIGS})",
                "narrow the grid values or split the sweep into several specs",
            )
        )
    loaded = None
    if not problems:
        assert spec is not None and feature_spec is not None
        loaded = LoadedSpec(
            spec=spec,
            path=path or Path(file),
            text=text if text is not None else yaml.safe_dump(raw, sort_keys=False),
            feature_spec=feature_spec,
            group_specs=tuple(group_specs),
        )
        problems.extend(_check_stream(loaded, file))
    if problems:
        raise SpecError(problems, hint=f"fix {file} and run again")
    assert loaded is not None
    return loaded


def _validate_features(raw: dict[str, Any], file: str, prefix: str = "features") -> tuple[Any, list[Problem]]:
    """An embedded feature spec is validated by its owner, with paths under ``prefix``."""
    from engine.features import FeatureSpec

    try:
        return FeatureSpec.parse(raw, source=file, prefix=prefix), []
    except SpecError as exc:
        return None, list(exc.problems)


def _check_stream(loaded: LoadedSpec, file: str) -> list[Problem]:
    """The parts must make one stream detector (e.g. every group on the same interval)."""
    configs = loaded.spec.configs()
    if not configs:
        return []
    try:
        loaded.stream_config(configs[0])
    except ValidationError as exc:
        return [
            Problem(
                file,
                "groups",
                str(err["msg"]).removeprefix("Value error, "),
                "fix the groups' features",
            )
            for err in exc.errors(include_url=False)
        ]
    return []


def _check_stateless(raw: Any, file: str) -> list[Problem]:
    """The model slot is fitted once and shared by every service of a role: stateless detectors only."""
    if not isinstance(raw, list):
        return []
    from engine.detectors import make_detector

    problems: list[Problem] = []
    for i, item in enumerate(raw):
        name = item.get("class") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            continue
        try:
            stateful = getattr(make_detector(name, {}), "stateful", False)
        except DetectorError:
            continue  # unknown classes are reported by _check_detectors
        if stateful:
            problems.append(
                Problem(
                    file,
                    f"detectors[{i}].class",
                    f"{name} keeps state between rows (stateful); an experiment's model is fitted once and "
                    "shared by every service of a group, so it must be stateless",
                    "pick a stateless detector (IForest, HBOS, PCA, KNN, ...); per-series state belongs in "
                    "`postprocess` (likelihood, spatial rule, suppression)",
                )
            )
    return problems


def _check_detectors(raw: Any, file: str) -> list[Problem]:
    """Unknown detector classes fail at load, with the closest registered name as a hint."""
    if not isinstance(raw, list):
        return []
    from engine.detectors import available_detectors

    known = list(available_detectors())
    problems: list[Problem] = []
    for i, item in enumerate(raw):
        name = item.get("class") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name or name in known or _is_pyod_class(name):
            continue
        hint = did_you_mean(name, known) or f"registered: {', '.join(sorted(known))}"
        problems.append(Problem(file, f"detectors[{i}].class", f"unknown detector '{name}'", hint))
    return problems


def _check_detector_params(raw: Any, file: str) -> list[Problem]:
    """Build every configuration of every well-formed grid and validate its parameters, unfitted.

    A misspelt or out-of-range parameter would otherwise fail each configuration at run time, after
    the data was read. Grids that do not parse, name an unknown class or expand past ``MAX_CONFIGS``
    are skipped: those are already reported by the checks above.
    """
    if not isinstance(raw, list):
        return []
    from engine.detectors import available_detectors

    known = set(available_detectors())
    problems: list[Problem] = []
    for i, item in enumerate(raw):
        try:
            grid = DetectorGrid.model_validate(item)
        except ValidationError:
            continue
        if grid.class_ not in known:
            continue
        problems.extend(
            detector_param_problems(
                file, f"detectors[{i}]", grid.class_, grid.params, grid.grid, max_configs=MAX_CONFIGS
            )
        )
    return problems


def _is_pyod_class(name: str) -> bool:
    """The registry also builds any PyOD class by name; probe PyOD's module layout without fitting."""
    import importlib

    try:
        importlib.import_module(f"pyod.models.{name.lower()}")
    except ImportError:
        return False
    return True
