"""The engine's own Prometheus metrics (``GET /metrics``).

One registry per ``Engine`` (not the process-global default) so that tests and a benchmark can run
several engines in one interpreter without metric-name collisions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class EngineMetrics:
    def __init__(self, queue_depth: Callable[[], float], approvals_pending: Callable[[], float]) -> None:
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
        self.actions = Counter("selfheal_actions", "Action executions, by status", ["status"], registry=r)
        self.scrape_errors = Counter(
            "selfheal_scrape_errors", "Failed Prometheus scrapes", ["url"], registry=r
        )
        self.errors = Counter(
            "selfheal_errors", "Errors the engine survived, by stage", ["stage"], registry=r
        )
        Gauge("selfheal_queue_depth", "Accepted points waiting to be scored", registry=r).set_function(
            queue_depth
        )
        Gauge("selfheal_approvals_pending", "Approval requests waiting", registry=r).set_function(
            approvals_pending
        )

    def count(self, kind: str, data: dict[str, Any]) -> None:
        """Count what a stage reported (its notes, which listeners hear too)."""
        if kind == "blocked":
            self.decisions.labels(f"blocked_{data['safeguard']}").inc()
        elif kind in _DECISIONS:
            self.decisions.labels(_DECISIONS[kind]).inc()
        elif kind == "dispatch" and data["kind"] == "action":
            self.decisions.labels("executed").inc()
        elif kind in _ACTIONS:
            self.actions.labels(_ACTIONS[kind]).inc()
        elif kind in ("policy_error", "journal_refused"):
            self.errors.labels("policy" if kind == "policy_error" else "journal").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


_DECISIONS = {"duplicate": "duplicate", "approval_requested": "awaiting_approval"}
_ACTIONS = {
    "executed": "succeeded",
    "action_failed": "failed",
    "verified": "verified",
    "verification_failed": "verification_failed",
}
