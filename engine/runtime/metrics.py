"""The engine's own Prometheus metrics (``GET /metrics``).

One registry per ``Engine`` (not the process-global default) so that tests and a benchmark can run
several engines in one interpreter without metric-name collisions.

Counters are counted from the notes the stages report (``count``). The gauges that describe the
engine's state (each service's score against its threshold and its diagnosis, the kill switch,
the bundle, pending approvals) are read when Prometheus scrapes (``EngineState``), so the hot path
pays nothing for them. ``dashboards/selfheal.json`` charts these names; a test keeps it to names
that exist here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.records import Diagnosis

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class EngineState:
    """What the state gauges show, taken when Prometheus scrapes."""

    queue_depth: int
    paused: bool
    approvals_pending: int
    oldest_approval_ts: float | None  # when the oldest pending request was made
    threshold: float
    scores: Mapping[str, tuple[float, float]]  # service -> (latest score, wall time seen)
    anomalous: Mapping[str, bool]  # service -> its last row was above the threshold
    bundle: Mapping[str, str]  # bundle_version, detector, detector_version, policy_version
    diagnoses: Mapping[str, Diagnosis] = field(default_factory=dict)  # service -> its latest event's


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], EngineState]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s, now = self.state(), time.time()
        yield GaugeMetricFamily("selfheal_queue_depth", "Accepted points waiting to be scored", s.queue_depth)
        yield GaugeMetricFamily("selfheal_paused", "1 while the kill switch stops all actions", int(s.paused))
        yield GaugeMetricFamily(
            "selfheal_approvals_pending", "Approval requests waiting", s.approvals_pending
        )
        yield GaugeMetricFamily(
            "selfheal_approval_oldest_age_seconds",
            "Age of the oldest pending approval request (0 when none waits)",
            0.0 if s.oldest_approval_ts is None else max(0.0, now - s.oldest_approval_ts),
        )
        yield InfoMetricFamily("selfheal_bundle", "The bundle and policy set the engine runs", dict(s.bundle))
        score = GaugeMetricFamily("selfheal_service_score", "Latest anomaly score", labels=["service"])
        threshold = GaugeMetricFamily(
            "selfheal_service_threshold", "Score above which a row is anomalous", labels=["service"]
        )
        age = GaugeMetricFamily(
            "selfheal_service_score_age_seconds", "Since the service was last scored", labels=["service"]
        )
        anomalous = GaugeMetricFamily(
            "selfheal_service_anomalous", "1 while the service's last row was anomalous", labels=["service"]
        )
        health = dict(s.anomalous)
        for service, (value, seen) in sorted(s.scores.items()):
            score.add_metric([service], value)
            threshold.add_metric([service], s.threshold)
            age.add_metric([service], max(0.0, now - seen))
            anomalous.add_metric([service], int(health.get(service, False)))
        yield from (score, threshold, age, anomalous)
        yield from _diagnosis_gauges(s.diagnoses, health)


def _diagnosis_gauges(diagnoses: Mapping[str, Diagnosis], health: Mapping[str, bool]) -> Iterator[Metric]:
    """The diagnosis of each service while it is anomalous (a recovered service's last diagnosis
    is history, not state: its series ends with the anomaly), and the root's evidence."""
    probability = GaugeMetricFamily(
        "selfheal_diagnosis_probability",
        "The anomalous service's diagnosis: its incident's fault kind, with the model's probability; "
        "role is root or victim, root names the service at fault",
        labels=["service", "kind", "role", "root"],
    )
    evidence = GaugeMetricFamily(
        "selfheal_diagnosis_evidence",
        "A root's metrics furthest from their normal: signed distance in its own recent spread (z)",
        labels=["service", "metric"],
    )
    for service, d in sorted(diagnoses.items()):
        if not health.get(service, False):
            continue
        probability.add_metric([service, d.kind, d.role, d.root], d.probability)
        if d.role == "root":
            for metric, z in d.evidence:
                evidence.add_metric([service, metric], z)
    yield from (probability, evidence)


class EngineMetrics:
    def __init__(self, state: Callable[[], EngineState]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.points_in = Counter("selfheal_points_in", "Points accepted, by source", ["source"], registry=r)
        self.points_rejected = Counter(
            "selfheal_points_rejected",
            "Points refused, by source and failing field",
            ["source", "field"],
            registry=r,
        )
        self.requests_throttled = Counter(
            "selfheal_requests_throttled", "Push requests answered 429 (queue full)", registry=r
        )
        self.feature_rows = Counter("selfheal_feature_rows", "Feature rows scored", registry=r)
        self.rows_refused = Counter(
            "selfheal_rows_refused",
            "Feature rows the detector could not score (dead-lettered; the rest of the tick was scored)",
            registry=r,
        )
        self.scoring_latency = Histogram(
            "selfheal_scoring_latency_seconds",
            "Time to score one micro-batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.arrival_to_event = Histogram(
            "selfheal_arrival_to_event_seconds",
            "From a point's arrival to the anomaly event it caused",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.event_to_dispatch = Histogram(
            "selfheal_event_to_dispatch_seconds",
            "From an anomaly event to its action's dispatch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.anomalies = Counter("selfheal_anomalies", "Anomaly events, by service", ["service"], registry=r)
        self.decisions = Counter("selfheal_decisions", "Decisions, by outcome", ["outcome"], registry=r)
        self.actions = Counter(
            "selfheal_actions",
            "Actuator calls by policy, action, kind (action, rollback, escalation) and outcome",
            ["policy", "action", "kind", "outcome"],
            registry=r,
        )
        self.verifications = Counter(
            "selfheal_verifications",
            "Verifications of an action, by policy, action and outcome (verified, failed)",
            ["policy", "action", "outcome"],
            registry=r,
        )
        self.scrape_errors = Counter(
            "selfheal_scrape_errors", "Failed Prometheus scrapes", ["url"], registry=r
        )
        self.errors = Counter(
            "selfheal_errors", "Errors the engine survived, by stage", ["stage"], registry=r
        )
        r.register(_StateCollector(state))

    def error(self, stage: str) -> None:
        """A stage failed once (``selfheal_errors_total{stage}``)."""
        self.errors.labels(stage).inc()

    def count(self, kind: str, data: dict[str, Any]) -> None:
        """Count what a stage reported (its notes, which listeners hear too)."""
        if kind == "blocked":
            self.decisions.labels(f"blocked_{data['safeguard']}").inc()
        elif kind in _DECISIONS:
            self.decisions.labels(_DECISIONS[kind]).inc()
        elif kind == "dispatch" and data["kind"] == "action":
            self.decisions.labels("executed").inc()
        elif kind in ("executed", "action_failed"):
            outcome = "succeeded" if kind == "executed" else "failed"
            self.actions.labels(data["policy"], data["action"], data["kind"], outcome).inc()
        elif kind in ("verified", "verification_failed"):
            outcome = "verified" if kind == "verified" else "failed"
            self.verifications.labels(data["policy"], data["action"], outcome).inc()
        elif kind in ("policy_error", "journal_refused"):
            self.errors.labels("policy" if kind == "policy_error" else "journal").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


_DECISIONS = {"duplicate": "duplicate", "approval_requested": "awaiting_approval", "observed": "observed"}
