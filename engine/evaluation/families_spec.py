"""The family comparison as a declared experiment (``experiments/families/*.yaml``).

The comparison of ``engine.evaluation.families`` is code; a spec makes it an experiment a data
scientist can copy and edit: which seeds and days of the synthetic platform, the training period,
the false-alarm budget, and the contenders (a label, a registered detector, its params and the
feature patterns it watches). Validated at load like every other spec: every problem at once,
with file, path and a hint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.detectors.spec_problems import detector_param_problems
from engine.durations import parse_duration
from engine.errors import Problem, SpecError
from engine.evaluation.families import Family
from engine.shipped import shipped
from engine.specs import load_yaml, problems_from

DEFAULT_SPEC = shipped("experiments") / "families" / "compare.yaml"


class FamilySpec(BaseModel):
    """One contender."""

    model_config = ConfigDict(extra="forbid")
    label: str
    detector: str
    params: dict[str, Any] = Field(default_factory=dict)
    features: list[str] | None = None

    def to_family(self) -> Family:
        return Family(
            self.label, self.detector, dict(self.params), tuple(self.features) if self.features else None
        )


class ComparisonSpec(BaseModel):
    """What ``selfheal experiment families`` runs."""

    model_config = ConfigDict(extra="forbid")
    name: str = "families"
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    days: float = Field(14.0, gt=0)
    train_days: float = Field(4.0, gt=0)
    interval: str = "10s"
    alarms_per_day: float = Field(1.0, gt=0)
    holdout_fraction: float = Field(0.5, gt=0, lt=1)
    families: list[FamilySpec] = Field(min_length=1)

    @field_validator("interval")
    @classmethod
    def _a_duration(cls, interval: str) -> str:
        """Parsed here, as the comparison will parse it, so `banana` fails before any data is made."""
        parse_duration(interval, allow_zero=False, what="interval")
        return interval


def load_comparison_spec(path: str | Path | None = None) -> ComparisonSpec:
    """Parse and validate a comparison spec; unknown detectors fail here, not after a minute of data."""
    source = Path(path) if path else DEFAULT_SPEC
    raw = load_yaml(source, hint="check the path and the YAML syntax")
    problems: list[Problem] = []
    spec: ComparisonSpec | None = None
    try:
        spec = ComparisonSpec.model_validate(raw)
    except ValidationError as exc:
        problems.extend(problems_from(exc, file=str(source), model=ComparisonSpec))
    families = raw.get("families") if isinstance(raw, dict) else None
    problems.extend(_family_problems(families if isinstance(families, list) else [], str(source)))
    if spec is not None and spec.train_days >= spec.days:
        problems.append(
            Problem(str(source), "train_days", "must be shorter than days", "leave days to score")
        )
    if problems or spec is None:
        raise SpecError(problems)
    return spec


def _family_problems(raw: list[Any], file: str) -> list[Problem]:
    """Unknown detectors and bad parameters of each well-formed contender, checked without fitting."""
    from engine.detectors import available_detectors

    known = set(available_detectors())
    problems: list[Problem] = []
    for i, item in enumerate(raw):
        try:
            family = FamilySpec.model_validate(item)
        except ValidationError:
            continue  # reported with its path by the model validation
        if family.detector not in known:
            problems.append(
                Problem(
                    file,
                    f"families[{i}].detector",
                    f"unknown detector {family.detector!r}",
                    "see `available_detectors()`",
                )
            )
        else:
            problems.extend(detector_param_problems(file, f"families[{i}]", family.detector, family.params))
    return problems
