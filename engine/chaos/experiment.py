"""Chaos experiments (experiments/chaos/*.yaml): typed, validated all at once, in Chaos Toolkit's shape.

An experiment states a steady-state hypothesis (probes with tolerances), a method (faults and
pauses), the remediation it expects from the engine (which action on which service, within what
time, approved or not), how the experiment answers approval requests (through the engine's HTTP
API), safeguards that abort the run when harm spreads, and rollbacks that undo its faults.
Durations are platform time ("10m", "2h"), so one file runs at any clock speed.

Every problem in a file is reported at once, with the file, the path inside it and a hint
(``experiments/chaos/x.yaml: method[1].fault: unknown key 'servce' (did you mean 'service'?)``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from engine.errors import Problem, SpecError
from engine.features.spec import parse_duration
from engine.simulation.config import INCIDENT_KINDS, KIND_ROLES
from engine.simulation.model import PLATFORM_METRICS
from engine.specs import did_you_mean, expect_mapping, load_yaml, problems_from

SERVICE_ROLES = {
    "gateway": "gateway",
    "inference-a": "inference",
    "inference-b": "inference",
    "vector-db": "vector_db",
    "feature-store": "feature_store",
    "ingestion": "ingestion",
}
Action = Literal["restart", "scale", "shift_traffic", "refresh_index", "rollback_model"]
ACTIONS: tuple[str, ...] = Action.__args__  # type: ignore[attr-defined]
METRICS = PLATFORM_METRICS

Duration = Annotated[float, BeforeValidator(parse_duration)]
Service = Literal["gateway", "inference-a", "inference-b", "vector-db", "feature-store", "ingestion"]
Metric = Literal[PLATFORM_METRICS]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tolerance(_Strict):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Tolerance:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}: no value can satisfy it")
        return self

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        parts = ([f">= {self.min:g}"] if self.min is not None else []) + (
            [f"<= {self.max:g}"] if self.max is not None else []
        )
        return " and ".join(parts)


class Probe(_Strict):
    """A metric of a service, aggregated over a trailing window of platform time, within tolerance."""

    name: str
    service: Service
    metric: Metric
    aggregate: Literal["mean", "max", "min", "p95", "last"] = "mean"
    window: Duration = 300.0
    tolerance: Tolerance

    @model_validator(mode="after")
    def _emitted(self) -> Probe:
        from engine.simulation.model import ROLE_METRICS

        role = SERVICE_ROLES[self.service]
        if self.metric not in ROLE_METRICS[role]:
            raise ValueError(
                f"{self.service} does not emit {self.metric}; it emits {', '.join(ROLE_METRICS[role])}"
            )
        return self


class Hypothesis(_Strict):
    title: str
    probes: list[Probe] = Field(min_length=1)
    check_after: Literal["method", "rollbacks"] = Field(
        "method", description="when the 'after' check runs: after the method, or after the rollbacks"
    )


class FaultSpec(_Strict):
    name: str
    kind: Literal["latency_creep", "memory_leak", "stale_index", "bad_deploy", "dependency_outage"]
    service: Service
    params: dict[Literal["magnitude", "ramp_s", "recovery_s", "duration_s"], float] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _role(self) -> FaultSpec:
        role = SERVICE_ROLES[self.service]
        if role not in KIND_ROLES[self.kind]:
            raise ValueError(
                f"{self.kind} cannot happen on {self.service} (a {role} service); "
                f"it needs a {' or '.join(sorted(KIND_ROLES[self.kind]))} service"
            )
        return self


class FaultStep(_Strict):
    fault: FaultSpec


class PauseStep(_Strict):
    pause: Duration


Step = FaultStep | PauseStep


class Expectation(_Strict):
    """The remediation a fault should get: ``action`` on ``service`` executed within ``within``.

    ``action`` may list several actions when any one of them is the remedy (a policy that scales
    out a queueing service and restarts it otherwise declares both); the first that ran is judged.
    """

    fault: str
    action: Action | list[Action]
    service: Service
    within: Duration = 1800.0
    approval: Literal["none", "approved", "rejected", "expired"] = "none"
    executed: bool = True
    verified: bool = True

    @property
    def actions(self) -> tuple[str, ...]:
        return (self.action,) if isinstance(self.action, str) else tuple(self.action)


class ApprovalAnswer(_Strict):
    """How the experiment answers an approval request for ``action`` on ``service``."""

    action: Action
    service: Service
    decide: Literal["approve", "reject", "ignore"]
    after: Duration = 60.0
    approver: str = "chaos-experiment"
    reason: str = "chaos experiment"


class Safeguard(_Strict):
    """Abort the experiment (and run the rollbacks) when this probe fails during the run."""

    name: str
    probe: Probe
    grace: Duration = Field(0.0, description="how long the probe may fail before the abort")


class Rollback(_Strict):
    clear_faults: Literal["all"] | Service = "all"


class ClockSpec(_Strict):
    speed: float = Field(720.0, gt=0, le=100_000, description="platform seconds per wall second")
    start: datetime = Field(datetime(2026, 1, 13, 9, 0), description="platform time the method starts")
    settle: Duration = Field(600.0, description="healthy platform time before the 'before' check")


class PlatformSpec(_Strict):
    seed: int = 0
    restart_s: Duration = 60.0
    index_rebuild_s: Duration | None = None
    rollout_s: Duration = 60.0


class Experiment(_Strict):
    title: str
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    clock: ClockSpec = Field(default_factory=ClockSpec)
    platform: PlatformSpec = Field(default_factory=PlatformSpec)
    steady_state_hypothesis: Hypothesis
    method: list[Step] = Field(min_length=1)
    expect: list[Expectation] = Field(default_factory=list)
    approvals: list[ApprovalAnswer] = Field(default_factory=list)
    safeguards: list[Safeguard] = Field(default_factory=list)
    rollbacks: list[Rollback] = Field(default_factory=lambda: [Rollback()])
    recovery_timeout: Duration = Field(
        1800.0, description="after the method: wait this long for the hypothesis"
    )
    allow_unexpected_actions: bool = False
    control: bool = Field(
        False, description="a quiet control: the method injects nothing and any action is a false one"
    )

    @property
    def faults(self) -> list[FaultSpec]:
        return [s.fault for s in self.method if isinstance(s, FaultStep)]

    @property
    def kinds(self) -> list[str]:
        return list(dict.fromkeys(f.kind for f in self.faults))


def _semantic(exp: Experiment, source: str) -> list[Problem]:
    """Cross-references pydantic cannot see: fault names unique, expectations name real faults."""
    problems: list[Problem] = []
    names: dict[str, int] = {}
    for i, step in enumerate(exp.method):
        if isinstance(step, FaultStep):
            if step.fault.name in names:
                problems.append(
                    Problem(
                        source,
                        f"method[{i}].fault.name",
                        f"fault name {step.fault.name!r} is used twice",
                        f"first at method[{names[step.fault.name]}]; names must be unique",
                    )
                )
            names.setdefault(step.fault.name, i)
    if exp.control and names:
        problems.append(
            Problem(
                source, "control", "a quiet control injects no fault", "remove the fault steps or the flag"
            )
        )
    if exp.control and exp.allow_unexpected_actions:
        problems.append(
            Problem(
                source,
                "allow_unexpected_actions",
                "a quiet control judges exactly the actions it would allow",
                "remove allow_unexpected_actions",
            )
        )
    if not names and not exp.control:
        problems.append(
            Problem(
                source,
                "method",
                "the method injects no fault",
                "add a `- fault: {...}` step, or set `control: true` for a quiet control",
            )
        )
    for i, e in enumerate(exp.expect):
        if e.fault not in names:
            hint = did_you_mean(e.fault, names) or f"faults: {', '.join(names) or 'none'}"
            problems.append(
                Problem(source, f"expect[{i}].fault", f"no fault named {e.fault!r} in the method", hint)
            )
        if e.approval in ("rejected", "expired") and e.executed:
            problems.append(
                Problem(
                    source,
                    f"expect[{i}].executed",
                    f"an action whose approval is {e.approval} cannot execute",
                    "set `executed: false`",
                )
            )
    probe_names = [p.name for p in exp.steady_state_hypothesis.probes]
    for dup in {n for n in probe_names if probe_names.count(n) > 1}:
        problems.append(
            Problem(
                source, "steady_state_hypothesis.probes", f"probe name {dup!r} is used twice", "rename one"
            )
        )
    return problems


def dump_experiment(exp: Experiment) -> str:
    """The experiment as a file ``load_experiment`` reads back equal (defaults left out)."""
    body = exp.model_dump(mode="json", exclude_defaults=True)
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=110)


def load_experiment(path: Path | str) -> Experiment:
    """Parse and validate one experiment file; every problem at once (``SpecError``)."""
    file = Path(path)
    source = str(file)
    if not file.is_file():
        raise SpecError([Problem(source, "", "file not found", "ls experiments/chaos/")])
    raw = load_yaml(file, hint="see experiments/chaos/README.md")
    if not isinstance(raw, dict):
        raise SpecError(expect_mapping(raw, source, hint="start with `title:`"))
    try:
        exp = Experiment.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(
            problems_from(exc, file=source, model=Experiment), hint="see experiments/chaos/README.md"
        ) from exc
    problems = _semantic(exp, source)
    if problems:
        raise SpecError(problems, hint="see experiments/chaos/README.md")
    return exp


__all__ = [
    "ACTIONS",
    "INCIDENT_KINDS",
    "METRICS",
    "ApprovalAnswer",
    "Expectation",
    "Experiment",
    "FaultSpec",
    "Hypothesis",
    "Probe",
    "Safeguard",
    "Tolerance",
    "dump_experiment",
    "load_experiment",
]
