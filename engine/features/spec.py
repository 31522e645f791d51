"""The declared feature spec: what to compute, validated before anything runs.

One ``FeatureSpec`` drives both executions (``batch_features`` over history and
``OnlineFeatures`` one point at a time), so a model tuned on batch features is fed the very same
columns live. The spec is strict: an unknown key, an unknown transform kind or a bad duration
fails at load with the file, the path inside it and a "did you mean" hint, never mid-run.

A spec in YAML::

    interval: 10s            # bucket width; buckets are epoch-aligned [k*interval, (k+1)*interval)
    lateness: 30s            # how long a bucket waits for late points (default 0s)
    aggregation: mean        # per-bucket aggregation: mean|sum|min|max|last|count (default mean)
    metrics:
      latency_p99_ms:
        transforms: [raw, {kind: zscore, window: 30}]
      error_rate:
        aggregation: max     # per-metric override
        transforms:
          - {kind: diff}
          - {kind: quantile, window: 30, q: 0.95}

Windows count buckets (see ``engine.features.definitions`` for the exact formulas). Feature names
are ``<metric>__<transform>``, e.g. ``latency_p99_ms__zscore_30``, in declaration order; that order
is the column order of every feature matrix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.durations import parse_duration as _parse_duration
from engine.errors import Problem, SpecError
from engine.specs import expect_mapping, load_yaml, problems_from

Aggregation = Literal["mean", "sum", "min", "max", "last", "count"]
AGGREGATIONS: tuple[str, ...] = ("mean", "sum", "min", "max", "last", "count")


def parse_duration(value: Any) -> float:
    """Seconds from ``10s``/``1m``/``500ms``/``1h30m``/``1d`` or a plain number of seconds.

    The grammar is ``engine.durations`` (shared with policies and experiments); zero is allowed
    here (``lateness: 0s``). Durations are kept at microsecond resolution because batch buckets
    are computed on integer microseconds; a value that is not a whole number of microseconds would
    put a point in different buckets in the two executions.
    """
    seconds = _parse_duration(value, allow_zero=True)
    us = round(seconds * 1e6)
    if abs(us - seconds * 1e6) > 1e-6 * max(1.0, seconds * 1e6):
        raise ValueError(f"{value!r} is finer than one microsecond; round it to whole microseconds")
    return us / 1e6


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransformBase(_Strict):
    """Common face of every transform: a name suffix and the number of buckets it looks back on."""

    name: str | None = Field(
        default=None, min_length=1, description="override the feature-name suffix (after '<metric>__')"
    )

    @property
    def suffix(self) -> str:
        return self.name or self._default_suffix()

    def _default_suffix(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @property
    def span(self) -> int:
        """Observed buckets of the metric (current included) the value depends on."""
        raise NotImplementedError  # pragma: no cover - every subclass overrides


class Raw(TransformBase):
    """The bucket's aggregated value."""

    kind: Literal["raw"] = "raw"

    def _default_suffix(self) -> str:
        return "raw"

    @property
    def span(self) -> int:
        return 1


class Mean(TransformBase):
    """Rolling mean of the last ``window`` buckets, current included."""

    kind: Literal["mean"] = "mean"
    window: int = Field(ge=1)

    def _default_suffix(self) -> str:
        return f"mean_{self.window}"

    @property
    def span(self) -> int:
        return self.window


class Std(TransformBase):
    """Rolling population standard deviation (ddof=0) of the last ``window`` buckets, current included."""

    kind: Literal["std"] = "std"
    window: int = Field(ge=2)

    def _default_suffix(self) -> str:
        return f"std_{self.window}"

    @property
    def span(self) -> int:
        return self.window


class ZScore(TransformBase):
    """(x - mean) / std against the ``window`` buckets before the current one (current excluded).

    A constant trailing window has no scale: z is 0 unless ``min_std`` (in the metric's units)
    gives one, e.g. ``min_std: 0.01`` for an error rate that sits at 0 and then jumps.
    """

    kind: Literal["zscore"] = "zscore"
    window: int = Field(ge=2)
    min_std: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)

    def _default_suffix(self) -> str:
        return f"zscore_{self.window}"

    @property
    def span(self) -> int:
        return self.window + 1


class Diff(TransformBase):
    """x minus the value ``lag`` observed buckets earlier."""

    kind: Literal["diff"] = "diff"
    lag: int = Field(default=1, ge=1)

    def _default_suffix(self) -> str:
        return f"diff_{self.lag}"

    @property
    def span(self) -> int:
        return self.lag + 1


class Quantile(TransformBase):
    """Rolling quantile ``q`` of the last ``window`` buckets, current included (numpy's 'linear')."""

    kind: Literal["quantile"] = "quantile"
    window: int = Field(ge=1)
    q: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)

    def _default_suffix(self) -> str:
        pct = format(self.q * 100, ".6g").replace(".", "p")
        return f"q{pct}_{self.window}"

    @property
    def span(self) -> int:
        return self.window


class Ratio(TransformBase):
    """(x + eps) / (baseline + eps), baseline = mean of the ``window`` buckets before the current one.

    ``eps`` keeps 0 -> 0 at 1.0 and a jump out of a zero baseline finite; a zero denominator gives 1.0.
    """

    kind: Literal["ratio"] = "ratio"
    window: int = Field(ge=1)
    eps: float = Field(default=1e-9, ge=0.0, allow_inf_nan=False)

    def _default_suffix(self) -> str:
        return f"ratio_{self.window}"

    @property
    def span(self) -> int:
        return self.window + 1


TRANSFORMS: dict[str, type[TransformBase]] = {
    "raw": Raw,
    "mean": Mean,
    "std": Std,
    "zscore": ZScore,
    "diff": Diff,
    "quantile": Quantile,
    "ratio": Ratio,
}

Transform = Annotated[Raw | Mean | Std | ZScore | Diff | Quantile | Ratio, Field(discriminator="kind")]


class MetricSpec(_Strict):
    """The transforms of one metric and, optionally, its own per-bucket aggregation."""

    aggregation: Aggregation | None = None
    transforms: list[Transform] = Field(min_length=1)

    @field_validator("transforms", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """``raw`` is short for ``{kind: raw}`` (any kind whose parameters all have defaults)."""
        if isinstance(value, list):
            return [{"kind": item} if isinstance(item, str) else item for item in value]
        return value

    @property
    def span(self) -> int:
        """Buckets of history this metric keeps: the largest span of its transforms."""
        return max(t.span for t in self.transforms)


class FeatureSpec(_Strict):
    """Resample interval, per-bucket aggregation, allowed lateness and per-metric transforms."""

    interval: float = Field(description="bucket width in seconds (accepts 10s, 1m, ...)")
    lateness: float = Field(default=0.0, description="how long an open bucket waits for late points")
    aggregation: Aggregation = "mean"
    metrics: dict[str, MetricSpec] = Field(min_length=1)

    _feature_names: list[str] = PrivateAttr(default_factory=list)

    SOURCE_DEFAULT: ClassVar[str] = "<feature spec>"

    @field_validator("interval", "lateness", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("interval must be greater than 0")
        return value

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, value: dict[str, MetricSpec]) -> dict[str, MetricSpec]:
        for name in value:
            if not name.strip():
                raise ValueError("metric names must be non-empty")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> FeatureSpec:
        seen: dict[str, str] = {}
        names: list[str] = []
        for metric, mspec in self.metrics.items():
            for i, t in enumerate(mspec.transforms):
                name = f"{metric}__{t.suffix}"
                where = f"metrics.{metric}.transforms[{i}]"
                if name in seen:
                    raise ValueError(
                        f"{where} repeats feature {name!r} (first at {seen[name]}); "
                        "give one of them a distinct `name`"
                    )
                seen[name] = where
                names.append(name)
        self._feature_names = names
        return self

    # ------------------------------------------------------------------------------ derived facts

    @property
    def feature_names(self) -> list[str]:
        """Column order of every feature matrix built from this spec."""
        return list(self._feature_names)

    @property
    def metric_names(self) -> list[str]:
        return list(self.metrics)

    @property
    def interval_us(self) -> int:
        return round(self.interval * 1e6)

    def aggregation_of(self, metric: str) -> str:
        return self.metrics[metric].aggregation or self.aggregation

    # ------------------------------------------------------------------------------ loading

    @classmethod
    def parse(cls, data: Any, *, source: str = SOURCE_DEFAULT, prefix: str = "") -> FeatureSpec:
        """Validate ``data`` and raise ``SpecError`` listing every problem with ``source`` and its path.

        ``prefix`` is the path of the spec inside a larger document (e.g. ``features``), so an
        experiment file that embeds a feature spec reports ``exp.yaml: features.interval: ...``.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(
                problems_from(exc, file=source, model=cls, prefix=prefix), hint=f"fix {source} and try again"
            ) from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> FeatureSpec:
        """Load a spec from a YAML file; errors name the file and the path inside it."""
        path = Path(path)
        file = str(path)
        if not path.is_file():
            raise SpecError([Problem(file, "", "no such file", "check the path to the feature spec")])
        data = load_yaml(path, hint="fix the YAML syntax")
        if not isinstance(data, Mapping):
            raise SpecError(expect_mapping(data, file, hint="start with `interval: 10s`"))
        return cls.parse(data, source=file)
