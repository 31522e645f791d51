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

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import Problem, SpecError
from engine.evaluation.families import Family

DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "experiments" / "families" / "compare.yaml"


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


def load_comparison_spec(path: str | Path | None = None) -> ComparisonSpec:
    """Parse and validate a comparison spec; unknown detectors fail here, not after a minute of data."""
    from engine.detectors import available_detectors

    source = Path(path) if path else DEFAULT_SPEC
    try:
        raw = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(
            [Problem(str(source), "", f"cannot read: {exc}", "check the path and the YAML syntax")]
        ) from exc
    try:
        spec = ComparisonSpec.model_validate(raw)
    except ValidationError as exc:
        problems = [
            Problem(
                str(source),
                ".".join(str(p) for p in err["loc"]),
                err["msg"],
                "see experiments/families/compare.yaml",
            )
            for err in exc.errors(include_url=False)
        ]
        raise SpecError(problems) from exc
    known = set(available_detectors())
    bad = [
        Problem(
            str(source),
            f"families[{i}].detector",
            f"unknown detector {f.detector!r}",
            "see `available_detectors()`",
        )
        for i, f in enumerate(spec.families)
        if f.detector not in known
    ]
    if bad:
        raise SpecError(bad)
    if spec.train_days >= spec.days:
        raise SpecError(
            [Problem(str(source), "train_days", "must be shorter than days", "leave days to score")]
        )
    return spec
