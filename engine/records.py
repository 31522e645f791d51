"""The engine's vocabulary: what passes from scoring to policies to the journal, in one shape each.

- ``Diagnosis``: what is wrong and where, attached to an anomaly event by the diagnosis stage
  (``engine.diagnosis``): the fault kind with its probability, the root service, the victims,
  this event's service's role, and the evidence (the root's metrics furthest from normal).
- ``AnomalyEvent``: a scored row worth telling the policies about (an anomaly, or a service's
  health changing back). The engine makes them, the policies match on them, shadow replay makes
  them the same way, the journal keeps them, and ``selfheal rules test`` reads them from JSON files.
- ``Decision``: a policy decided to act: what, on which target, under which limits, verified how,
  approved by whom. The policy host renders it; the engine's safeguards, approvals, executor and
  journal take it as it is (``to_record``/``from_record`` are its journal row, because a restarted
  engine must finish what a killed one started).
- ``Execution`` and ``Outcome``: one actuator call a decision caused (the action itself, or the
  rollback or escalation after it) and what came back.

Why one module at the bottom of the package: every layer speaks these types, so none of them
converts another's, and no layer has to import another to know what a decision is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.ids import hex_id

Severity = Literal["low", "medium", "high", "critical"]
SEVERITY_LEVEL: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}
RISKS = ("low", "medium", "high")
EXECUTION_KINDS = ("action", "rollback", "escalation")


def new_id(prefix: str) -> str:
    """Unique ids: a prefix that says what it is, the time it was made in milliseconds (12 hex
    digits), then 64 random bits (16 hex digits): ``dec-018f3a2b4c5d`` + ``9e8d7c6b5a493827``.

    Why the time first: these ids are the journal's keys (events, decisions, executions and their
    idempotency keys, verifications), and a B-tree takes keys that grow on the page at its right
    edge, where random keys each land on a page of their own, which the commit every dispatch waits
    for then writes out. On a journal of 24,000 decisions a decided tick's commit of 16 took 4.1 ms
    against 5.4 with random ids (``bench_grown_commit`` in ``tests/benchmarks/bench_journal.py``),
    and wrote 475 KB of WAL against 790 KB. Uniqueness is the random bits' (a clock set back only
    costs the order).
    """
    return f"{prefix}-{time.time_ns() // 1_000_000:012x}{hex_id(64)}"


def severity_for(score: float) -> Severity:
    """Default severity from a calibrated score when the event does not set one."""
    if score >= 0.99:
        return "critical"
    if score >= 0.9:
        return "high"
    if score >= 0.7:
        return "medium"
    return "low"


DiagnosisKind = Literal[
    "latency_creep", "memory_leak", "stale_index", "bad_deploy", "dependency_outage", "unknown"
]
DIAGNOSIS_KINDS: tuple[str, ...] = get_args(DiagnosisKind)
"""The diagnosis' vocabulary: the platform's five fault kinds and 'unknown'."""
Role = Literal["root", "victim"]


class Diagnosis(BaseModel):
    """What is wrong and where, as of one event, held over ``window_start``..``window_end``.

    ``kind`` is the fault kind of ``root`` (the most upstream anomalous service whose signature
    explains its callers' symptoms) with its ``probability``; ``role`` is the event's service's
    part in it. ``evidence`` lists the root's metrics furthest from their normal, as signed
    distances (z, in the root's own recent spread): what the kind was read from.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: DiagnosisKind
    probability: float = Field(ge=0.0, le=1.0)
    root: str
    role: Role = "root"
    victims: tuple[str, ...] = ()
    evidence: tuple[tuple[str, float], ...] = ()
    window_start: float | None = None
    window_end: float | None = None
    model_version: str = ""


class AnomalyEvent(BaseModel):
    """One scored row of one service worth telling the policies about (score calibrated to [0, 1]).

    ``anomalous`` is False only for a health change back to normal. ``contributing`` names the
    metrics behind the strongest features (what policies match on); ``features`` keeps those
    features with their distance from the service's recent normal (|z|), as evidence.
    ``moment`` is the time policies reason about (the end of the scored window). ``diagnosis`` is
    set by the diagnosis stage (None where none runs).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str
    detector: str
    score: float
    ts: float = Field(description="epoch seconds, UTC: the scored row (its feature bucket)")
    threshold: float = 0.0
    anomalous: bool = True
    severity: Severity | None = None
    tick: int | None = Field(
        None, description="the service's scoring tick; derived from the moment if absent"
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="the service's latest values")
    contributing: tuple[str, ...] = ()
    features: tuple[tuple[str, float], ...] = ()
    window_start: float | None = None
    window_end: float | None = None
    bundle_version: str = ""
    detector_version: str = ""
    diagnosis: Diagnosis | None = None
    id: str = Field(default_factory=lambda: new_id("evt"), description="unique; durable-rules dedups")
    arrival: float = Field(0.0, description="perf_counter when the points behind it arrived (latency)")

    @model_validator(mode="before")
    @classmethod
    def _severity(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("severity") is None and "score" in data:
            try:
                return {**data, "severity": severity_for(float(data["score"]))}
            except (TypeError, ValueError):
                return data  # the score's own error says what is wrong
        return data

    @property
    def moment(self) -> float:
        return self.window_end if self.window_end is not None else self.ts


@dataclass(frozen=True)
class SafeguardSpec:
    """Per-policy limits; ``None`` means 'no limit of this kind' (the engine's globals still apply)."""

    cooldown_s: float = 0.0
    max_per_hour: int | None = None  # per target
    max_per_hour_global: int | None = None  # circuit breaker across targets, from the policy
    max_concurrent: int | None = None  # executions of this rule in flight at once (all targets)
    blast_radius: float | None = None  # one execution may touch max(1, floor(replicas * this))


@dataclass(frozen=True)
class VerifySpec:
    """The steady state an action must bring back, and by when.

    ``score_below``: the detector's calibrated score on the target must drop below this bound;
    ``metrics``: each metric's latest value must lie in its ``(low, high)`` range (either end may be
    None). All given conditions must hold. ``on_failure`` lists what to do when the deadline passes:
    "escalate", "rollback". ``escalate_to``: a webhook URL overriding the engine's default.
    """

    deadline_s: float = 300.0
    score_below: float | None = None
    metrics: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    on_failure: tuple[str, ...] = ("escalate",)
    settle_s: float = 0.0  # consecutive seconds the steady state must hold
    escalate_to: str | None = None


@dataclass(frozen=True)
class ApprovalSpec:
    required: bool = False
    ttl_s: float = 900.0
    on_expiry: str = "deny"  # or "approve" when the policy says so
    approvers: tuple[str, ...] = ()  # empty: anyone holding the token


@dataclass(frozen=True)
class ActionCall:
    action: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """A policy decided to act: what, on which target, under which limits, and why.

    ``evidence`` lists the earlier anomaly events a persistence rule joined; ``replicas`` is how
    many of the target's replicas the action touches at once (for the blast radius); ``diagnosis``
    is the triggering event's (what the approver and the journal are shown).
    """

    id: str
    event_id: str
    service: str
    target: str
    action: str
    params: dict[str, Any]
    risk: str = "low"
    replicas: int = 1
    policy: str = ""
    policy_version: str = ""
    rule: str = ""
    safeguards: SafeguardSpec = field(default_factory=SafeguardSpec)
    verify: VerifySpec | None = None
    approval: ApprovalSpec = field(default_factory=ApprovalSpec)
    inverse: ActionCall | None = None
    evidence: tuple[str, ...] = ()
    bundle_version: str = ""
    detector: str = ""
    detector_version: str = ""
    window_start: float | None = None
    window_end: float | None = None
    diagnosis: Diagnosis | None = None

    def fields(self) -> dict[str, str]:
        """Who and what, for a log line's ``extra`` (JSON logs carry them as fields) and for the
        notes metrics count by policy and action."""
        return {"decision_id": self.id, "service": self.service, "policy": self.policy, "action": self.action}

    def to_record(self) -> dict[str, Any]:
        """The journal row: flat columns plus a ``spec`` holding limits, verify, approval, inverse."""
        return {
            "id": self.id,
            "event_id": self.event_id,
            "service": self.service,
            "target": self.target,
            "action": self.action,
            "params": self.params,
            "risk": self.risk,
            "policy": self.policy,
            "policy_version": self.policy_version,
            "rule": self.rule,
            "bundle_version": self.bundle_version,
            "detector": self.detector,
            "detector_version": self.detector_version,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "spec": {
                "replicas": self.replicas,
                "safeguards": _plain(self.safeguards),
                "verify": None if self.verify is None else _plain(self.verify),
                "approval": _plain(self.approval),
                "inverse": None if self.inverse is None else _plain(self.inverse),
                "evidence": list(self.evidence),
                "diagnosis": None if self.diagnosis is None else self.diagnosis.model_dump(mode="json"),
            },
        }

    @classmethod
    def from_record(cls, row: dict[str, Any]) -> Decision:
        spec = row.get("spec") or {}
        verify = spec.get("verify")
        approval = spec.get("approval") or {}
        return cls(
            id=row["id"],
            event_id=row.get("event_id") or "",
            service=row["service"],
            target=row["target"],
            action=row["action"],
            params=dict(row.get("params") or {}),
            risk=row.get("risk") or "low",
            replicas=int(spec.get("replicas", 1)),
            policy=row.get("policy") or "",
            policy_version=row.get("policy_version") or "",
            rule=row.get("rule") or "",
            safeguards=SafeguardSpec(**(spec.get("safeguards") or {})),
            verify=None if verify is None else _verify(verify),
            approval=ApprovalSpec(**{**approval, "approvers": tuple(approval.get("approvers") or ())}),
            inverse=None if spec.get("inverse") is None else ActionCall(**spec["inverse"]),
            evidence=tuple(spec.get("evidence") or ()),
            bundle_version=row.get("bundle_version") or "",
            detector=row.get("detector") or "",
            detector_version=row.get("detector_version") or "",
            window_start=row.get("window_start"),
            window_end=row.get("window_end"),
            diagnosis=None if spec.get("diagnosis") is None else Diagnosis.model_validate(spec["diagnosis"]),
        )


def _plain(spec: SafeguardSpec | VerifySpec | ApprovalSpec | ActionCall) -> dict[str, Any]:
    """A spec's fields as a dict, for its journal row. Not ``dataclasses.asdict``: that copies every
    value deeply, and these specs hold only numbers, strings and tuples or dicts of them, which
    nobody changes (the specs are frozen). ``asdict`` of a decision's four specs (twice a decision)
    was over a third of the commit of a tick that decided 16 times (0.23 ms a decision)."""
    return {f.name: getattr(spec, f.name) for f in fields(spec)}


def _verify(raw: dict[str, Any]) -> VerifySpec:
    return VerifySpec(
        **{
            **raw,
            "on_failure": tuple(raw.get("on_failure") or ()),
            "metrics": {k: (v[0], v[1]) for k, v in (raw.get("metrics") or {}).items()},
        }
    )


@dataclass(frozen=True)
class Execution:
    """One actuator call a decision caused: the action itself, or the rollback or escalation after it.

    Journaled (status 'started') before the call; its idempotency key makes a second attempt of the
    same call impossible, across restarts too. ``emitted`` is when the anomaly event behind an
    action was made (``perf_counter``), for latency figures.
    """

    id: str
    decision: Decision
    kind: str
    call: ActionCall
    emitted: float | None = None

    @property
    def idempotency_key(self) -> str:
        return f"{self.decision.id}:{self.kind}"


@dataclass(frozen=True)
class Outcome:
    """What an actuator call returned: its result (JSON-ready) or the error, and when (wall time)."""

    execution: Execution
    result: Any
    error: str | None
    returned: float
