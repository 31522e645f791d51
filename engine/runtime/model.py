"""What the engine passes between its stages: anomaly events and decisions.

These are the runtime's own small, serialisable records. The policy layer (``engine.policy``)
produces decisions in its own types; ``engine.runtime.components`` adapts them to ``Decision`` so
the engine's safeguards, approvals, executor and journal depend on nothing but this module.
Every record round-trips through the journal (``to_record`` / ``from_record``) because a restarted
engine must be able to finish what a killed one started.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RISKS = ("low", "medium", "high")


@dataclass(frozen=True)
class AnomalyEvent:
    """One scoring result worth telling the policies about (anomalous or a health change)."""

    id: str
    service: str
    detector: str
    detector_version: str
    bundle_version: str
    score: float
    threshold: float
    anomalous: bool
    contributing: tuple[tuple[str, float], ...]  # (feature, contribution) strongest first
    window_start: float
    window_end: float
    ts: float  # the feature row's bucket (epoch seconds)
    arrival: float = 0.0  # perf_counter when the batch behind it arrived (for latency)
    metrics: dict[str, float] = field(default_factory=dict)  # the service's latest metric values

    @property
    def contributing_metrics(self) -> list[str]:
        """Metric names behind the strongest features (feature names are ``<metric>__<transform>``)."""
        out: list[str] = []
        for feature, _ in self.contributing:
            metric = feature.split("__", 1)[0]
            if metric not in out:
                out.append(metric)
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready. Spelled out rather than ``dataclasses.asdict``: this runs for every event, and
        asdict's recursive deep copy was a visible share of the engine's CPU under load."""
        return {
            "id": self.id,
            "service": self.service,
            "detector": self.detector,
            "detector_version": self.detector_version,
            "bundle_version": self.bundle_version,
            "score": self.score,
            "threshold": self.threshold,
            "anomalous": self.anomalous,
            "contributing": [list(c) for c in self.contributing],
            "window_start": self.window_start,
            "window_end": self.window_end,
            "ts": self.ts,
            "arrival": self.arrival,
            "metrics": dict(self.metrics),
        }


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
    """A policy decided to act: what, on which target, under which limits, and why."""

    id: str
    event_id: str
    service: str
    target: str
    action: str
    params: dict[str, Any]
    risk: str = "low"
    replicas: int = 1  # how many of the target's replicas this action touches at once
    policy: str = ""
    policy_version: str = ""
    rule: str = ""
    safeguards: SafeguardSpec = field(default_factory=SafeguardSpec)
    verify: VerifySpec | None = None
    approval: ApprovalSpec = field(default_factory=ApprovalSpec)
    inverse: ActionCall | None = None
    escalate: ActionCall | None = None  # e.g. a webhook; the engine's default is used when None
    bundle_version: str = ""
    detector: str = ""
    detector_version: str = ""
    window_start: float | None = None
    window_end: float | None = None

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
                "safeguards": asdict(self.safeguards),
                "verify": None if self.verify is None else asdict(self.verify),
                "approval": asdict(self.approval),
                "inverse": None if self.inverse is None else asdict(self.inverse),
                "escalate": None if self.escalate is None else asdict(self.escalate),
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
            escalate=None if spec.get("escalate") is None else ActionCall(**spec["escalate"]),
            bundle_version=row.get("bundle_version") or "",
            detector=row.get("detector") or "",
            detector_version=row.get("detector_version") or "",
            window_start=row.get("window_start"),
            window_end=row.get("window_end"),
        )


def _verify(raw: dict[str, Any]) -> VerifySpec:
    return VerifySpec(
        **{
            **raw,
            "on_failure": tuple(raw.get("on_failure") or ()),
            "metrics": {k: (v[0], v[1]) for k, v in (raw.get("metrics") or {}).items()},
        }
    )
