"""What a stream detector is made of, declared and validated before anything is fitted.

One ``StreamConfig`` describes the whole detector the engine runs: *metric groups*, each a
feature spec over some metrics for the services that emit them (every service emits the core
metrics; only vector-db emits retrieval quality), one model class (fitted per group on the rows of
every service that has the group, or refitted per series as the stream advances), the calibration
of its raw scores, the stateful post-processing (anomaly likelihood, spatial rule, repeat
suppression) and the alarm threshold. A service is scored on every group whose ``services`` globs
match it: its feature row is the union of those groups' features, each group's model scores its
columns, and the row's score is the largest calibrated group score. It is the ``detector`` part
of an experiment spec and the content of ``detector.json`` in every saved artifact.

Why groups and not one feature spec per service: a model fitted on one service's rows alone never
sees what the platform's other services taught the shared one (a recovery's echo in a trailing
z-score is normal on a victim, so the shared model has seen it), and a feature row that needs
every metric of its spec cannot score a service that does not emit them all.

A group's ``features`` is either a fixed feature spec (``engine.features.FeatureSpec``: interval,
metrics, transforms) or an *adaptive* one (``AdaptiveFeatures``): one metric whose resample
interval and seasonal lag are chosen per series from its first ``warmup_points`` points, which is
how NAB files of unknown sampling are scored (an adaptive group is the detector's only group).

``points`` adds point detectors beside the model (``engine.detectors.pointwise``: context novelty,
seasonal profile, level shift, spectral residual): each learns one column of a series' rows as
they close, row by row, and its raw score goes through an anomaly likelihood of its own; the row's
score is the largest of the model's score and those likelihoods (``LikelihoodEnsemble``) before
the spatial rule and suppression. Their state is part of each series' state.

The model slot takes *stateless* detectors when the model is fitted once on history and shared by
every series of a group (a detector that keeps state between rows, like the forecasters, would
mix the series); with ``refit`` each series gets its own model and any detector goes.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.features.spec import FeatureSpec, parse_duration

__all__ = [
    "AdaptiveFeatures",
    "GroupConfig",
    "ModelConfig",
    "PointMember",
    "PointsConfig",
    "PostprocessConfig",
    "RefitConfig",
    "SeasonalConfig",
    "StreamConfig",
    "SustainedConfig",
    "ThresholdConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SeasonalConfig(_Strict):
    """Add ``diff(lag = period)`` when the warm-up shows the series repeats with that period.

    The column is kept when var(x_t - x_{t-lag}) < ``gate`` * var(x) over the warm-up rows, i.e. the
    previous period explains most of the variance; otherwise it would only add noise.
    """

    period: float = Field(default=86400.0, gt=0, description="seconds (accepts 1d, 12h, ...)")
    gate: float = Field(default=0.3, gt=0)

    @field_validator("period", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class AdaptiveFeatures(_Strict):
    """One metric; interval and seasonality decided per series on its first ``warmup_points`` points.

    Those points are buffered (their rows score 0 and only teach the post-processing), then the
    interval is the median step of their timestamps and the seasonal column is kept if it helps.
    """

    kind: Literal["adaptive"] = "adaptive"
    metric: str = "value"
    transforms: list[Any] = Field(default_factory=lambda: ["raw"], min_length=1)
    seasonal: SeasonalConfig | None = SeasonalConfig()
    warmup_points: int = Field(default=750, ge=2, description="NAB: the probationary period")


class GroupConfig(_Strict):
    """A metric group: the services that emit its metrics (globs) and the features computed from them."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    services: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    features: FeatureSpec | AdaptiveFeatures

    @field_validator("features", mode="before")
    @classmethod
    def _which_features(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("kind") == "adaptive":
            return AdaptiveFeatures.model_validate(value)
        return value

    def matches(self, service: str) -> bool:
        return any(fnmatch.fnmatchcase(service, pattern) for pattern in self.services)


class ModelConfig(_Strict):
    """A registered detector class and its parameters."""

    class_: str = Field(alias="class", min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class RefitConfig(_Strict):
    """Per series, refit the model every ``every`` rows on the last ``window`` rows before the row scored."""

    every: int = Field(default=1, ge=1)
    window: int = Field(default=1000, ge=2)
    min_rows: int = Field(default=20, ge=2, description="rows needed before the first fit (score 0 before)")


class PostprocessConfig(_Strict):
    """The stateful steps after the model (``engine.detectors.likelihood``), per series.

    ``squash`` maps raw scores of an uncalibrated (refitted) model to [0, 1]; ``likelihood`` puts
    every series on one scale (Numenta's anomaly likelihood over ``average`` raw scores against the
    last ``history`` averages); the spatial rule scores 1.0 when a watched column leaves the range
    seen so far by more than ``spatial_tolerance`` of that range (``spatial_columns`` are feature
    names or globs, default every column; the range starts from the training rows' when the model
    is fitted on history); suppression caps repeat alarms within ``suppress_rows`` rows.

    The defaults suit a calibrated model fitted on history (the platform's detectors): no
    likelihood (calibration already puts every role on one scale), no suppression (policies count
    persistent anomalies), and a spatial rule that only fires far outside the training range (a
    value beyond it by the range's own width: a p99 a thousand standard deviations high, not a
    busy afternoon). NAB specs use Numenta-style defaults instead (``engine.evaluation.streaming``).
    """

    squash: Literal["clip", "ratio"] = "clip"
    likelihood: bool = False
    average: int = Field(default=20, ge=1)
    history: int = Field(default=8640, ge=2)
    reestimate: int = Field(default=100, ge=1)
    spatial_tolerance: float | None = Field(default=1.0, ge=0)
    spatial_columns: list[str] | None = None
    suppress_rows: int = Field(default=0, ge=0)
    suppress_level: float = Field(default=0.5, ge=0, le=1)
    suppress_cap: float = Field(default=0.3, ge=0, le=1)


class PointMember(_Strict):
    """A point detector by registered name (``engine.detectors.point_ensemble``) and its parameters."""

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> PointMember:
        from engine.detectors.point_ensemble import make_point_detector
        from engine.errors import DetectorParamError

        try:
            make_point_detector(self.name, self.params)
        except DetectorParamError as exc:  # pydantic reports ValueError with the field's path
            raise ValueError(f"{exc} ({exc.hint})") from exc
        return self


class PointsConfig(_Strict):
    """Point detectors beside the model, each on every feature column ``columns`` (names or globs)
    matches, in an ensemble of their likelihoods; ``with_model`` false leaves the model's score out
    of the ensemble (the members alone decide: how a member is evaluated on its own)."""

    members: list[PointMember] = Field(min_length=1)
    columns: list[str] = Field(default_factory=lambda: ["*__raw"], min_length=1)
    with_model: bool = True


class SustainedConfig(_Strict):
    """A second alarm for faults that grow slowly: a row is also an anomaly when both its final
    score and the mean final score of its series' last ``rows`` rows are above the ``q`` quantile
    of that mean on the training rows.

    Why: a slow fault (a latency creep) moves the features' trailing windows with it, so its
    score sits just under the threshold for many minutes and crosses it only now and then; a
    policy counting anomalous rows ("5 of the last 10") then never acts. Normal rows that score
    high come alone, so their mean over a window stays low; a slow fault's do not. The row's own
    score must stand out too: the mean outlives a fault by several rows, and a victim whose
    callers had recovered stayed anomalous on it alone (and was read as a root of its own)."""

    rows: int = Field(ge=2, description="rows averaged (the series' own, in order)")
    q: float = Field(default=0.999, gt=0, lt=1)


class ThresholdConfig(_Strict):
    """Final scores above the threshold are anomalies: a quantile of the training rows' final
    scores, or a fixed value; ``sustained`` adds the windowed alarm of ``SustainedConfig``."""

    kind: Literal["quantile", "fixed"] = "quantile"
    q: float = Field(default=0.99, gt=0, lt=1)
    value: float | None = Field(default=None, ge=0, le=1)
    sustained: SustainedConfig | None = None

    @model_validator(mode="after")
    def _fixed_needs_value(self) -> ThresholdConfig:
        if self.kind == "fixed" and self.value is None:
            raise ValueError("kind 'fixed' needs a value in [0, 1]")
        if self.kind == "fixed" and self.sustained is not None:
            raise ValueError("sustained is a quantile of the training rows' scores: it needs kind 'quantile'")
        return self


class StreamConfig(_Strict):
    """A whole stream detector (see the module docstring)."""

    name: str = Field(default="selfheal", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    groups: list[GroupConfig] = Field(min_length=1)
    model: ModelConfig
    refit: RefitConfig | None = None
    calibration: Literal["ecdf", "gaussian", "minmax"] | None = None
    postprocess: PostprocessConfig = PostprocessConfig()
    points: PointsConfig | None = None
    threshold: ThresholdConfig = ThresholdConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> StreamConfig:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"groups: names must be unique, got {names}")
        adaptive = [g.name for g in self.groups if isinstance(g.features, AdaptiveFeatures)]
        if adaptive and len(self.groups) > 1:
            raise ValueError(f"groups {adaptive}: an adaptive group must be the detector's only group")
        if adaptive and self.refit is None:
            raise ValueError(f"groups {adaptive}: adaptive features need `refit` (a model per series)")
        fixed = [g.features for g in self.groups if isinstance(g.features, FeatureSpec)]
        for what in ("interval", "lateness"):
            values = {getattr(f, what) for f in fixed}
            if len(values) > 1:
                raise ValueError(
                    f"groups: every group needs the same {what} (one row per bucket), got {sorted(values)}"
                )
        owner: dict[str, str] = {}
        for g in self.groups:
            if isinstance(g.features, FeatureSpec):
                for metric in g.features.metrics:
                    if metric in owner:
                        raise ValueError(
                            f"groups: metric {metric!r} is in groups {owner[metric]!r} and {g.name!r}; "
                            "declare each metric's transforms in one group"
                        )
                    owner[metric] = g.name
        if self.refit is not None:
            if len(self.groups) > 1:
                raise ValueError("`refit` (a model per series) takes one group")
            if self.calibration is not None:
                raise ValueError(
                    "calibration needs a model fitted on history; with `refit` use postprocess.squash"
                )
            if self.threshold.kind != "fixed":
                raise ValueError(
                    "with `refit` there are no training scores: give threshold {kind: fixed, value}"
                )
        return self

    def groups_for(self, service: str) -> list[GroupConfig]:
        """The groups whose globs match ``service`` (none: the service is not scored)."""
        return [g for g in self.groups if g.matches(service)]
