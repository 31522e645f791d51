"""Compile a ``PolicySet`` into durable-rules rulesets (the JSON form; one per shard of services).

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
must not act once the gate lifts). Events for services no rule covers go to no ruleset, which the
host reports as "no match". Services are cut into shards of at most ``SHARD_SERVICES``, a ruleset
each (``CompiledPolicySet``); an event goes to its service's ruleset, a health fact to every ruleset
whose rules test it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.errors import PolicyError
from engine.policy.loader import BoundRule, PolicySet
from engine.policy.model import DAYS, Bounds, MaintenanceWindow, When
from engine.records import SEVERITY_LEVEL

EVENT_TYPE = "anomaly"  # fact types of the durable-rules messages: an anomaly event,
HISTORY_TYPE = "anomaly_history"  # an earlier anomaly kept for "N of the last M ticks",
ANCHOR_TYPE = "anomaly_streak"  # the first anomaly of the current streak (``persistence.for``),
HEALTH_TYPE = "health"  # and a service's health fact
SINK_RULE = "sink"
SINK_PRIORITY = 10**8
NODE_CHILDREN = 512  # durable-rules 2.0.28's NEXT_BUCKET_LENGTH: successors of one test, at most
SHARD_SERVICES = 256  # services (and upstreams named by gated rules) in one ruleset, at most
RULES_PER_SERVICE = 64  # durable-rules fails an event that 65 rules match, and every event after it


@dataclass(frozen=True)
class CompiledPolicySet:
    """The rulesets (without their names: the host names them uniquely) and how to read their firings.

    One ruleset per shard of the covered services (``shard_of``): durable-rules 2.0.28 loops for
    ever registering a ruleset in which one test has more than ``NODE_CHILDREN`` successors (a
    table of fixed size that it probes without end when full), and every service adds one
    successor to the anomaly test ("service is X"), as every upstream a gated rule names adds one
    to the health test. A shard holds at most ``SHARD_SERVICES`` services and as many upstreams;
    a policy set over fewer services compiles to one ruleset, as it always did.
    """

    policy_set: PolicySet
    rulesets: tuple[dict[str, Any], ...]
    index: dict[str, tuple[str, str]]
    history_ticks: int
    keeps_anchor: bool
    shard_of: dict[str, int]  # service -> the ruleset that holds its rules (covered services only)
    health_shards: dict[str, tuple[int, ...]]  # service -> the rulesets that test its health fact

    @property
    def rule_count(self) -> int:
        """durable-rules rules in all the rulesets (each shard has a sink of its own)."""
        return sum(len(rules) for rules in self.rulesets)

    def to_json(self) -> str:
        """Stable JSON (for bundles and for reading): the ruleset(s) plus the firing index. One
        ruleset is written as ``ruleset``, as before shards existed, so bundles keep their bytes."""
        shards: dict[str, Any] = (
            {"ruleset": self.rulesets[0]} if len(self.rulesets) == 1 else {"rulesets": list(self.rulesets)}
        )
        return json.dumps(
            {
                "fingerprint": self.policy_set.fingerprint,
                "history_ticks": self.history_ticks,
                "keeps_anchor": self.keeps_anchor,
                "index": {k: list(v) for k, v in self.index.items()},
                **shards,
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
    """The durable-rules rulesets for every enabled rule of ``policy_set``."""
    by_service: dict[str, dict[str, Any]] = {}  # service -> its rules, by name (priority order)
    health: dict[str, set[str]] = {}  # service -> the services whose health facts its rules test
    index: dict[str, tuple[str, str]] = {}
    ordered = sorted(policy_set.rules, key=lambda b: (-b.rule.priority, b.order))
    history_ticks = 0
    keeps_anchor = False
    for rank, bound in enumerate(ordered):
        per = bound.rule.when.persistence
        if per is not None and per.for_ is not None:
            keeps_anchor = True
        elif per is not None:
            history_ticks = max(history_ticks, per.window)
        for service in bound.services:
            name = f"r{bound.order}_{service}"
            upstreams = policy_set.topology.upstreams(service)
            body = compile_rule(bound, service, upstreams)
            by_service.setdefault(service, {})[name] = {**body, "pri": rank + 1, "run": name}
            index[name] = (bound.id, service)
            tested = health.setdefault(service, set())
            if bound.rule.unless.upstream_anomalous:
                if len(upstreams) > NODE_CHILDREN - 1:
                    raise PolicyError(
                        f"rule {bound.id} gates {service} on {len(upstreams)} upstream services; "
                        f"the rules engine can test at most {NODE_CHILDREN - 1} in one rule",
                        hint="set unless.upstream_anomalous: false on this rule, or shorten the "
                        "depends_on chains of this service in topology.yaml",
                    )
                tested.update(upstreams)
            if bound.rule.unless.in_maintenance:
                tested.add(service)
    for service, rules in by_service.items():
        if len(rules) > RULES_PER_SERVICE:
            names = ", ".join(index[name][0] for name in list(rules)[:3])
            raise PolicyError(
                f"{len(rules)} rules cover service {service} ({names}, ...); the rules engine fails "
                f"an event that more than {RULES_PER_SERVICE} rules match, and every event after it",
                hint=f"cover {service} with at most {RULES_PER_SERVICE} rules: merge rules, or narrow "
                "their when.services",
            )
    shards = _shards(sorted(by_service), health)
    shard_of = {service: k for k, services in enumerate(shards) for service in services}
    health_shards: dict[str, set[int]] = {}
    for service, k in shard_of.items():
        for tested in health[service]:
            health_shards.setdefault(tested, set()).add(k)
    rulesets = tuple(_ruleset(services, by_service) for services in shards) or ({},)
    return CompiledPolicySet(
        policy_set,
        rulesets,
        index,
        history_ticks,
        keeps_anchor,
        shard_of,
        {service: tuple(sorted(ks)) for service, ks in health_shards.items()},
    )


def _shards(services: list[str], health: dict[str, set[str]]) -> list[list[str]]:
    """``services`` in order, cut into shards of at most ``SHARD_SERVICES`` services whose rules
    test at most ``SHARD_SERVICES`` services' health facts (one service whose gating names more
    stands alone: ``compile_policies`` refused beyond ``NODE_CHILDREN``)."""
    shards: list[list[str]] = []
    current: list[str] = []
    tested: set[str] = set()
    for service in services:
        grown = tested | health[service]
        if current and (len(current) >= SHARD_SERVICES or len(grown) > SHARD_SERVICES):
            shards.append(current)
            current, grown = [], set(health[service])
        current.append(service)
        tested = grown
    if current:
        shards.append(current)
    return shards


def _ruleset(services: list[str], by_service: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One shard's rules, and its sink: it consumes the shard's events that no rule took."""
    rules = {name: rule for service in services for name, rule in by_service[service].items()}
    sink_tests = [{"t": EVENT_TYPE}, *_any_of([{"service": s} for s in services])]
    rules[SINK_RULE] = {"all": [{"e": {"$and": sink_tests}}], "pri": SINK_PRIORITY, "run": SINK_RULE}
    return rules
