"""Compile a ``PolicySet`` into one durable-rules ruleset (the JSON form).

durable-rules does the matching: the filters of ``when`` on the anomaly event, persistence as a
join of the event with earlier anomalies of the same service (history facts), dependency gating and
the maintenance flag as ``$not`` joins with health facts, and maintenance windows as comparisons on
the event's day-of-week and minute-of-day.

Shape of what is generated, per (rule, concrete service)::

    "r3_inference-a": {
      "pri": <lower runs first>,
      "all": [
        {"e":  {"$and": [{"t": "anomaly"}, {"service": "inference-a"}, {"$gte": {"score": 0.7}}, ...]}},
        {"h1": {"$and": [{"t": "anomaly_history"}, {"service": "inference-a"}, ...same filters...,
                         {"$lt": {"tick": {"e": "tick"}}},
                         {"$gt": {"tick": {"$sub": {"$l": {"e": "tick"}, "$r": M}}}}]}},
        {"g$not": {"$and": [{"t": "health"}, {"anomalous": true}, {"$or": [{"service": "vector-db"}, ...]}]}},
        {"m$not": {"$and": [{"t": "health"}, {"service": "inference-a"}, {"maintenance": true}]}}
      ],
      "run": "r3_inference-a"
    }

Rules are expanded per service because each service has its own upstreams. One anomaly event
leads to at most one decision: the event is consumed by the first rule that fires, by ``priority``
(higher first) then file order. A lowest-priority *sink* rule consumes events that matched no rule
so that nothing lingers in durable-rules and fires later when a health fact changes (a gated event
must not act once the gate lifts). Events for services no rule covers match nothing and raise
``MessageNotHandledException``, which the host reports as "no match".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.policy.loader import BoundRule, PolicySet
from engine.policy.model import DAYS, Bounds, MaintenanceWindow, When
from engine.records import SEVERITY_LEVEL

EVENT_TYPE = "anomaly"  # fact types of the durable-rules messages: an anomaly event,
HISTORY_TYPE = "anomaly_history"  # an earlier anomaly kept for "N of the last M ticks",
ANCHOR_TYPE = "anomaly_streak"  # the first anomaly of the current streak (``persistence.for``),
HEALTH_TYPE = "health"  # and a service's health fact
SINK_RULE = "sink"
SINK_PRIORITY = 10**8


@dataclass(frozen=True)
class CompiledPolicySet:
    """The ruleset (without its name: the host names it uniquely) and how to read its firings."""

    policy_set: PolicySet
    rules: dict[str, Any]
    index: dict[str, tuple[str, str]]
    history_ticks: int
    keeps_anchor: bool
    covered_services: tuple[str, ...]

    def to_json(self) -> str:
        """Stable JSON (for bundles and for reading): the ruleset plus the firing index."""
        return json.dumps(
            {
                "fingerprint": self.policy_set.fingerprint,
                "history_ticks": self.history_ticks,
                "keeps_anchor": self.keeps_anchor,
                "index": {k: list(v) for k, v in self.index.items()},
                "ruleset": self.rules,
            },
            indent=2,
            sort_keys=True,
        )


def _bounds(field: str, b: Bounds | None) -> list[dict[str, Any]]:
    if b is None:
        return []
    out: list[dict[str, Any]] = []
    if b.min is not None:
        out.append({"$gte": {field: b.min}})
    if b.max is not None:
        out.append({"$lte": {field: b.max}})
    return out


def glob_to_pattern(glob: str) -> str:
    """durable-rules' ``$mt`` dialect (whole-string): ``*`` -> ``.*``, ``?`` -> ``.``, ``.`` -> ``%.``."""
    return "".join({"*": ".*", "?": ".", ".": "%."}.get(ch, ch) for ch in glob)


def _any_of(tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not tests:
        return []
    return [tests[0]] if len(tests) == 1 else [{"$or": tests}]


def event_filters(when: When) -> list[dict[str, Any]]:
    """The per-anomaly tests of ``when`` (shared by the event and its history facts)."""
    tests: list[dict[str, Any]] = []
    if when.detector != ["*"]:
        tests += _any_of(
            [
                {"$mt": {"detector": glob_to_pattern(d)}} if any(c in d for c in "*?") else {"detector": d}
                for d in when.detector
            ]
        )
    tests += _bounds("score", when.score)
    if when.severity is not None:
        if when.severity.min is not None:
            tests.append({"$gte": {"sev": SEVERITY_LEVEL[when.severity.min]}})
        if when.severity.max is not None:
            tests.append({"$lte": {"sev": SEVERITY_LEVEL[when.severity.max]}})
    for metric, bounds in sorted(when.metrics.items()):
        tests += _bounds(f"metrics.{metric}", bounds)
    c = when.contributing
    if c is not None and c.min_strength > 0:
        tests += _any_of([{"$gte": {f"strength.{m}": c.min_strength}} for m in c.any])
    elif c is not None:
        tests += _any_of([{"$iany": {"contributing": {"$i": m}}} for m in c.any])
    if when.diagnosis is not None:
        tests += _any_of([{"diagnosis_kind": k} for k in when.diagnosis.kind])
        if when.diagnosis.min_probability > 0:
            tests.append({"$gte": {"diagnosis_probability": when.diagnosis.min_probability}})
    if when.role != "any":
        tests.append({"role": when.role})
    return tests


def _outside(window: MaintenanceWindow) -> dict[str, Any]:
    """A test true when the event's time is outside ``window``."""
    if window.from_ is not None and window.until is not None:
        start, end = _epoch(window.from_), _epoch(window.until)
        return {"$or": [{"$lt": {"ts": start}}, {"$gte": {"ts": end}}]}
    first, last = window.minutes()
    if first <= last:
        off_time: dict[str, Any] = {"$or": [{"$lt": {"tod": first}}, {"$gte": {"tod": last}}]}
        if not window.days:
            return off_time
        return {"$or": [_not_on(window.days, 0), off_time]}
    # spans midnight: [first, 24:00) on the listed days, then [00:00, last) on the day after each
    if not window.days:
        return {"$and": [{"$lt": {"tod": first}}, {"$gte": {"tod": last}}]}
    return {
        "$and": [
            {"$or": [_not_on(window.days, 0), {"$lt": {"tod": first}}]},
            {"$or": [_not_on(window.days, 1), {"$gte": {"tod": last}}]},
        ]
    }


def _not_on(days: list[str], shift: int) -> dict[str, Any]:
    """True when the event's weekday is none of ``days`` (each moved ``shift`` days later)."""
    return {"$and": [{"$neq": {"dow": (DAYS.index(d) + shift) % 7}} for d in days]}


def _epoch(moment: datetime) -> float:
    """Epoch seconds; naive datetimes are UTC (the project's convention)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _history(
    name: str, prev: str, service: str, filters: list[dict[str, Any]], window: int
) -> dict[str, Any]:
    ordering = {"$lt": {"tick": {prev: "tick"}}}
    recent = {"$gt": {"tick": {"$sub": {"$l": {"e": "tick"}, "$r": window}}}}
    return {name: {"$and": [{"t": HISTORY_TYPE}, {"service": service}, *filters, ordering, recent]}}


def compile_rule(bound: BoundRule, service: str, upstreams: list[str]) -> dict[str, Any]:
    """The durable-rules rule for one policy rule on one service."""
    rule = bound.rule
    filters = event_filters(rule.when)
    event_tests: list[dict[str, Any]] = [{"t": EVENT_TYPE}, {"service": service}, *filters]
    event_tests += [_outside(w) for w in rule.unless.maintenance_windows]
    patterns: list[dict[str, Any]] = [{"e": {"$and": event_tests}}]
    per = rule.when.persistence
    if per is not None and per.for_ is not None:
        old_enough = {"$lte": {"ts": {"$sub": {"$l": {"e": "ts"}, "$r": per.for_}}}}
        detector = event_filters(When(services=[service], detector=rule.when.detector))
        patterns.append({"h1": {"$and": [{"t": ANCHOR_TYPE}, {"service": service}, *detector, old_enough]}})
    elif per is not None and (per.count or 1) > 1:
        prev = "e"
        for k in range(1, (per.count or 1)):
            patterns.append(_history(f"h{k}", prev, service, filters, per.window))
            prev = f"h{k}"
    if rule.unless.upstream_anomalous and upstreams:
        ups = _any_of([{"service": u} for u in upstreams])
        patterns.append({"g$not": {"$and": [{"t": HEALTH_TYPE}, {"anomalous": True}, *ups]}})
    if rule.unless.in_maintenance:
        patterns.append(
            {"m$not": {"$and": [{"t": HEALTH_TYPE}, {"service": service}, {"maintenance": True}]}}
        )
    return {"all": patterns}


def compile_policies(policy_set: PolicySet) -> CompiledPolicySet:
    """The durable-rules ruleset for every enabled rule of ``policy_set``."""
    rules: dict[str, Any] = {}
    index: dict[str, tuple[str, str]] = {}
    ordered = sorted(policy_set.rules, key=lambda b: (-b.rule.priority, b.order))
    history_ticks = 0
    keeps_anchor = False
    covered: set[str] = set()
    for rank, bound in enumerate(ordered):
        per = bound.rule.when.persistence
        if per is not None and per.for_ is not None:
            keeps_anchor = True
        elif per is not None:
            history_ticks = max(history_ticks, per.window)
        for service in bound.services:
            name = f"r{bound.order}_{service}"
            body = compile_rule(bound, service, policy_set.topology.upstreams(service))
            rules[name] = {**body, "pri": rank + 1, "run": name}
            index[name] = (bound.id, service)
            covered.add(service)
    if covered:
        sink_tests = [{"t": EVENT_TYPE}, *_any_of([{"service": s} for s in sorted(covered)])]
        rules[SINK_RULE] = {"all": [{"e": {"$and": sink_tests}}], "pri": SINK_PRIORITY, "run": SINK_RULE}
    return CompiledPolicySet(policy_set, rules, index, history_ticks, keeps_anchor, tuple(sorted(covered)))
