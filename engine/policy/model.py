"""The policy language as typed models (what rules/*.yaml parses into).

A policy file is read by someone paged at 3 a.m., so every section answers one question:

- ``when``: which anomaly events (detector, services by name or glob, score and severity bounds,
  persistence as N of the last M scoring ticks or for a duration, bounds on other metrics, the
  contributing metrics and their strength, the diagnosis' fault kind and probability, and the
  service's role in its incident: root cause or victim);
- ``unless``: which service-health facts veto it (an anomalous upstream dependency, a maintenance
  flag or window);
- ``then``: the action, its typed parameters (``${service}``-style templates filled from the event),
  its risk and its inverse;
- ``safeguards``, ``verify``, ``approval``: how often, how widely, what must come back, and who must
  say yes first.

The models only check shapes and local invariants; ``engine.policy.loader`` checks references
(services, actions, parameters, templates) against the topology and the action registry, and turns
every failure into a ``Problem`` with file, path and hint.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from engine.policy._util import parse_duration
from engine.records import DiagnosisKind, Severity

Risk = Literal["low", "medium", "high"]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

RISK_LEVEL: dict[str, int] = {"low": 0, "medium": 1, "high": 2}
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds; written ``90``, ``"90s"``, ``"15m"``, ``"2h"`` or ``"1h30m"``."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _slug(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{value!r} must be lower-case letters, digits, '-' or '_'")
    return value


Name = Annotated[str, BeforeValidator(lambda v: _slug(v) if isinstance(v, str) else v)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


MAX_BOUND = 1e15
"""Largest magnitude of a bound. No metric reaches it, and a bound of 1e308 is an always-true (or
never-true) test that only looks like a limit; beyond 2**53 a float64 does not even count exactly."""
MIN_BOUND = 1e-4
"""Smallest magnitude of a bound but 0. durable-rules' JSON parser reads no exponent, and Python
writes one below 1e-4 (``5e-05``): such a bound made compiling the rules fail with "error code
204". Event values that small are read as ±``MIN_BOUND`` (``engine.policy.host.plain``)."""


def _realistic(value: float) -> float:
    if abs(value) > MAX_BOUND:
        raise ValueError(
            f"bound {value:g} is beyond ±{MAX_BOUND:g}, which no metric reaches; "
            "write a realistic bound, or leave this end of the range open"
        )
    if value and abs(value) < MIN_BOUND:
        raise ValueError(
            f"bound {value:g} is finer than {MIN_BOUND:g}, the smallest the rules engine reads; "
            f"round it to 0 or to {MIN_BOUND:g}"
        )
    return value


Bound = Annotated[float, AfterValidator(_realistic)]


class _Model(BaseModel):
    """Strict, frozen, and finite: a NaN bound can never pass, an infinite one never fails."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class Bounds(_Model):
    """An inclusive, finite numeric range; either end may be open."""

    min: Bound | None = None
    max: Bound | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Bounds:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min and/or max (an empty range would test nothing)")
        return self

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class SeverityBounds(_Model):
    """A severity range by name (low < medium < high < critical)."""

    min: Severity | None = None
    max: Severity | None = None


class Persistence(_Model):
    """Debounce: ``{count: 3, of: 5}`` (3 of the last 5 scoring ticks) or ``{for: 5m}``.

    ``for`` means the service has been anomalous without a healthy tick in between for at least
    that long, counted from the first anomaly of the streak.
    """

    count: int | None = Field(default=None, ge=1)
    of: int | None = Field(default=None, ge=1)
    for_: Duration | None = Field(default=None, alias="for")

    @model_validator(mode="after")
    def _one_form(self) -> Persistence:
        if self.for_ is not None and (self.count is not None or self.of is not None):
            raise ValueError("use either {count, of} or {for}, not both")
        if self.for_ is None and self.count is None:
            raise ValueError("give {count: N, of: M} or {for: DURATION}")
        return self

    @property
    def window(self) -> int:
        """M: how many ticks back the count looks (``of`` defaults to ``count``)."""
        return self.of if self.of is not None else (self.count or 1)


_DETECTOR = re.compile(r"^[A-Za-z0-9_.*?-]+$")


def _contributing_form(value: Any) -> Any:
    """The short form ``contributing: [a, b]`` (or one name) means ``{any: [a, b]}``."""
    if isinstance(value, str):
        return {"any": [value]}
    if isinstance(value, list):
        return {"any": value} if value else None
    return value


class Contributing(_Model):
    """At least one of ``any`` is among the event's contributing metrics, with a strength (its
    distance from the service's recent normal, |z|) of at least ``min_strength``.

    Why a minimum: which metrics top the list changes with a fault's strength, and a weak third
    place is noise; ``min_strength: 3`` asks for a metric that really moved.
    """

    any: Annotated[list[str], BeforeValidator(_as_list)] = Field(min_length=1)
    min_strength: Bound = Field(default=0.0, ge=0.0, le=1e6)


class DiagnosisMatch(_Model):
    """The event's diagnosis names one of ``kind`` with at least ``min_probability``."""

    kind: Annotated[list[DiagnosisKind], BeforeValidator(_as_list)] = Field(min_length=1)
    min_probability: Bound = Field(default=0.0, ge=0.0, le=1.0)


class When(_Model):
    """Which anomaly events this rule is about."""

    detector: Annotated[list[str], BeforeValidator(_as_list)] = Field(default_factory=lambda: ["*"])
    services: Annotated[list[str], BeforeValidator(_as_list)] = Field(min_length=1)
    score: Bounds | None = None
    severity: SeverityBounds | None = None
    persistence: Persistence | None = None
    metrics: dict[str, Bounds] = Field(default_factory=dict)
    contributing: Annotated[Contributing | None, BeforeValidator(_contributing_form)] = Field(
        default=None, description="at least one of these metrics is among the event's contributors"
    )
    diagnosis: DiagnosisMatch | None = Field(
        default=None, description="the fault kind the diagnosis gives the event, and how sure it must be"
    )
    role: Literal["root", "victim", "any"] = Field(
        default="any", description="the service's part in its incident, per the diagnosis"
    )

    @field_validator("detector")
    @classmethod
    def _detector_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not _DETECTOR.match(pattern):
                raise ValueError(
                    f"detector pattern {pattern!r} may use letters, digits, '-', '_', '.', '*', '?'"
                )
        return value


class MaintenanceWindow(_Model):
    """A recurring UTC window (``days`` + ``start``/``end`` as HH:MM) or a fixed one (``from``/``until``).

    A recurring window whose end is before its start spans midnight: ``{days: [sat], start: "23:00",
    end: "01:00"}`` covers Saturday 23:00 to Sunday 01:00. Naive ``from``/``until`` are UTC.
    """

    days: list[Day] | None = None
    start: str | None = None
    end: str | None = None
    from_: datetime | None = Field(default=None, alias="from")
    until: datetime | None = None
    reason: str = ""

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str | None) -> str | None:
        if value is not None and not _HHMM.match(value):
            raise ValueError(f"{value!r} is not a time of day; write HH:MM in UTC, e.g. '02:00'")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> MaintenanceWindow:
        recurring = self.start is not None or self.end is not None or self.days is not None
        fixed = self.from_ is not None or self.until is not None
        if recurring == fixed:
            raise ValueError("give either {days?, start, end} (recurring, UTC) or {from, until} (fixed)")
        if recurring and (self.start is None or self.end is None):
            raise ValueError("a recurring window needs both start and end (HH:MM, UTC)")
        if fixed and (self.from_ is None or self.until is None):
            raise ValueError("a fixed window needs both from and until")
        return self

    def minutes(self) -> tuple[int, int]:
        """(start, end) as minutes of the UTC day; end < start means the window spans midnight."""
        assert self.start is not None and self.end is not None
        sh, sm = self.start.split(":")
        eh, em = self.end.split(":")
        return int(sh) * 60 + int(sm), int(eh) * 60 + int(em)


class Unless(_Model):
    """Health facts that veto the rule. Dependency gating and the maintenance flag are on by default."""

    upstream_anomalous: bool = Field(
        default=True, description="skip when an upstream dependency of the service is itself anomalous"
    )
    in_maintenance: bool = Field(default=True, description="skip while the service is flagged in maintenance")
    maintenance_windows: list[MaintenanceWindow] = Field(default_factory=list)


class InverseSpec(_Model):
    """An explicit inverse: the action (and params) that undoes ``then``."""

    action: str
    params: dict[str, Any] = Field(default_factory=dict)


class Then(_Model):
    """The action. ``params`` values may be templates: ``${service}``, ``${metrics.memory_util}``."""

    action: str
    target: str = "${service}"
    params: dict[str, Any] = Field(default_factory=dict)
    risk: Risk | None = Field(default=None, description="defaults to the action's declared risk")
    inverse: InverseSpec | Literal["auto", "none"] = Field(
        default="auto", description="'auto' uses the action's declared inverse"
    )


class Safeguards(_Model):
    """Limits the engine enforces against its journal before executing (not durable-rules' job)."""

    cooldown: Duration = 600.0
    max_per_hour: int = Field(default=3, ge=1, description="per target")
    max_per_hour_global: int = Field(default=20, ge=1, description="circuit breaker across all targets")
    max_concurrent: int = Field(default=1, ge=1)
    blast_radius: float = Field(default=0.5, gt=0.0, le=1.0, description="fraction of replicas at once")

    def max_replicas_at_once(self, replicas: int) -> int:
        """How many of ``replicas`` one execution may touch (at least one)."""
        return max(1, int(replicas * self.blast_radius))


class SteadyState(_Model):
    """What must be true again after the action."""

    score_below: float | None = Field(default=None, gt=0.0, le=1.0)
    metrics: dict[str, Bounds] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something(self) -> SteadyState:
        if self.score_below is None and not self.metrics:
            raise ValueError("a steady state needs score_below and/or metrics bounds")
        return self


class Verify(_Model):
    steady_state: SteadyState
    deadline: Duration
    on_failure: Literal["escalate", "rollback", "both"] = "escalate"
    escalate_to: str | None = Field(default=None, description="webhook URL that receives escalations")


class Approval(_Model):
    required_for: Annotated[list[Risk], BeforeValidator(_as_list)] = Field(default_factory=lambda: ["high"])
    ttl: Duration = 1800.0
    on_expiry: Literal["deny", "approve"] = "deny"
    approvers: Annotated[list[str], BeforeValidator(_as_list)] = Field(
        default_factory=list, description="who may approve; empty means any authenticated approver"
    )


class Rule(_Model):
    name: Name
    description: str = ""
    enabled: bool = True
    priority: int = Field(default=0, ge=-100, le=100, description="higher wins when rules overlap")
    when: When
    unless: Unless = Field(default_factory=Unless)
    then: Then
    safeguards: Safeguards = Field(default_factory=Safeguards)
    verify: Verify
    approval: Approval = Field(default_factory=Approval)


class Defaults(_Model):
    """Sections merged (key by key) under every rule of the file."""

    unless: dict[str, Any] = Field(default_factory=dict)
    safeguards: dict[str, Any] = Field(default_factory=dict)
    verify: dict[str, Any] = Field(default_factory=dict)
    approval: dict[str, Any] = Field(default_factory=dict)


class PolicyHeader(_Model):
    """Everything in a policy file except its rules."""

    policy: Name
    version: str = "1"
    description: str = ""
    owner: str = ""
    defaults: Defaults = Field(default_factory=Defaults)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value


class RuleHeader(_Model):
    """A rule's own scalar keys (its sections are validated one by one)."""

    name: Name
    description: str = ""
    enabled: bool = True
    priority: int = Field(default=0, ge=-100, le=100, description="higher wins when rules overlap")


class Policy(PolicyHeader):
    """One policy file: a name, a version, defaults, and rules."""

    rules: list[Rule] = Field(min_length=1)
    source: str = Field(default="", exclude=True, description="file it was loaded from")


RULE_SECTIONS: dict[str, type[BaseModel]] = {
    "when": When,
    "unless": Unless,
    "then": Then,
    "safeguards": Safeguards,
    "verify": Verify,
    "approval": Approval,
}
"""Rule sections validated one by one so one broken section does not hide errors in the others."""
