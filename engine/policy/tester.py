"""Offline evaluation of one event against policies: what ``selfheal rules test`` prints.

Nothing is executed: a fresh ``PolicyHost`` gets the health facts, the earlier anomalies (for
persistence) and the event, and we report the decision (rule, rendered action, risk, safeguards,
verification, approval) or, for no match, which rules covered the service and why each passed on it.

An event file is either a bare anomaly event or a golden case::

    {"description": "...", "history": [event, ...], "health": [{"service": "vector-db", "anomalous": true}],
     "event": {...}, "expect": {"matched": true, "rule": "memory-leak/restart-leaking", "action": "restart",
                               "target": "inference-a", "params": {}, "requires_approval": false}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import Problem, SpecError
from engine.policy.host import HealthFact, PolicyHost, strengths
from engine.policy.loader import PolicySet, load_policies
from engine.records import SEVERITY_LEVEL, AnomalyEvent, Decision


@dataclass
class Evaluation:
    event: AnomalyEvent
    decision: Decision | None
    reasons: list[str] = field(default_factory=list)
    earlier_decisions: list[Decision] = field(default_factory=list)
    expect: dict[str, Any] | None = None
    mismatches: list[str] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return self.decision is not None


def _parse(doc: Any, file: str) -> tuple[AnomalyEvent, list[AnomalyEvent], list[HealthFact], dict | None]:
    from pydantic import ValidationError

    from engine.specs import problems_from

    if not isinstance(doc, dict):
        raise SpecError([Problem(file, "", "expected a JSON object (an event or a golden case)")])
    golden = "event" in doc
    raw_event = doc["event"] if golden else doc
    try:
        event = AnomalyEvent.model_validate(raw_event)
        history = [AnomalyEvent.model_validate(h) for h in doc.get("history", [])] if golden else []
        health = [HealthFact.model_validate(h) for h in doc.get("health", [])] if golden else []
    except ValidationError as exc:
        raise SpecError(
            problems_from(exc, file=file, model=AnomalyEvent, prefix="event" if golden else "")
        ) from exc
    return event, history, health, doc.get("expect") if golden else None


def parse_facts(doc: Any, file: str) -> list[HealthFact]:
    """Health facts from ``[{service, anomalous, maintenance}]`` or ``{"health": [...]}``."""
    from pydantic import ValidationError

    from engine.specs import problems_from

    items = doc.get("health", []) if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise SpecError([Problem(file, "", 'expected a list of health facts or {"health": [...]}')])
    facts, problems = [], []
    for i, item in enumerate(items):
        try:
            facts.append(HealthFact.model_validate(item))
        except ValidationError as exc:  # every fact's problems at once, each with its path
            problems += problems_from(exc, file=file, model=HealthFact, prefix=f"health[{i}]")
    if problems:
        raise SpecError(problems)
    return facts


def evaluate(
    policies: PolicySet | Path | str,
    event_doc: Any,
    facts: list[HealthFact] | None = None,
    *,
    file: str = "<event>",
) -> Evaluation:
    """Run one event (with its history and health facts) through a fresh host; no side effects."""
    policy_set = policies if isinstance(policies, PolicySet) else load_policies(policies)
    event, history, health, expect = _parse(event_doc, file)
    host = PolicyHost(policy_set)
    for fact in [*health, *(facts or [])]:
        host.set_health(fact.service, anomalous=fact.anomalous, maintenance=fact.maintenance)
    earlier = [d for d in (host.post(h) for h in history) if d is not None]
    decision = host.post(event)
    result = Evaluation(event, decision, earlier_decisions=earlier, expect=expect)
    if decision is None:
        result.reasons = explain(policy_set, event, host.health())
    if expect is not None:
        result.mismatches = compare(expect, decision)
    return result


def explain(policy_set: PolicySet, event: AnomalyEvent, health: dict[str, HealthFact]) -> list[str]:
    """Why no rule fired, rule by rule (a readable approximation of what durable-rules tested)."""
    covering = [b for b in policy_set.rules if event.service in b.services]
    if not covering:
        return [f"no rule covers service {event.service!r}"]
    reasons = []
    for bound in covering:
        when, why = bound.rule.when, []
        if when.score and not when.score.contains(event.score):
            why.append(f"score {event.score} outside [{when.score.min}, {when.score.max}]")
        if (
            when.severity
            and when.severity.min
            and SEVERITY_LEVEL[event.severity or "low"] < SEVERITY_LEVEL[when.severity.min]
        ):
            why.append(f"severity {event.severity} below {when.severity.min}")
        for metric, bounds in when.metrics.items():
            value = event.metrics.get(metric)
            if value is None:
                why.append(f"metric {metric} missing from the event")
            elif not bounds.contains(value):
                why.append(f"metric {metric}={value} outside [{bounds.min}, {bounds.max}]")
        c = when.contributing
        if c is not None and c.min_strength > 0:
            strength = strengths(event)
            if not any(strength.get(m, 0.0) >= c.min_strength for m in c.any):
                why.append(f"none of {c.any} contributing with strength >= {c.min_strength:g}")
        elif c is not None and not set(c.any) & set(event.contributing):
            why.append(f"none of {c.any} among contributing metrics")
        d = event.diagnosis
        if when.diagnosis is not None:
            if d is None:
                why.append("the event has no diagnosis")
            elif d.kind not in when.diagnosis.kind or d.probability < when.diagnosis.min_probability:
                why.append(
                    f"diagnosis {d.kind} ({d.probability:.2f}) is not {'/'.join(when.diagnosis.kind)}"
                    f" with probability >= {when.diagnosis.min_probability:g}"
                )
        if when.role != "any" and (d.role if d else "unknown") != when.role:
            why.append(
                f"role {d.role if d else 'unknown'} is not {when.role}"
                + (f" (root cause: {d.root})" if d and d.role == "victim" else "")
            )
        ups = [
            u
            for u in policy_set.topology.upstreams(event.service)
            if health.get(u, HealthFact(service=u)).anomalous
        ]
        if bound.rule.unless.upstream_anomalous and ups:
            why.append(f"dependency gating: upstream {', '.join(ups)} anomalous")
        if (
            bound.rule.unless.in_maintenance
            and health.get(event.service, HealthFact(service=event.service)).maintenance
        ):
            why.append("service is flagged in maintenance")
        if not why and bound.rule.when.persistence is not None:
            why.append("persistence not reached yet (add earlier anomalies as history)")
        if not why:
            why.append("detector or maintenance window did not match")
        reasons.append(f"{bound.id}: " + "; ".join(why))
    return reasons


def compare(expect: dict[str, Any], decision: Decision | None) -> list[str]:
    """Differences between a golden case's ``expect`` block and what happened."""
    out: list[str] = []
    matched = decision is not None
    if expect.get("matched", True) != matched:
        out.append(f"matched: expected {expect.get('matched', True)}, got {matched}")
        return out
    if decision is None:
        return out
    actual = {
        "rule": decision.rule,
        "action": decision.action,
        "target": decision.target,
        "params": decision.params,
        "risk": decision.risk,
        "requires_approval": decision.approval.required,
    }
    for key, want in expect.items():
        if key in actual and actual[key] != want:
            out.append(f"{key}: expected {want!r}, got {actual[key]!r}")
    return out
