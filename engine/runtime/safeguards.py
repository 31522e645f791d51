"""Safeguards: may this decision act now? A pure function over counts read from the journal.

Why here and not in durable-rules: limits must hold across restarts and across policies, so they are
counted in the journal (the one durable record of what was executed), and they must be explainable:
a refused decision is journaled with the safeguard that refused it. ``check`` takes everything as
arguments, so every rule is unit-tested without a clock, a database or a thread.

Order matters only for the reason reported; the first refusing safeguard wins:
kill switch, maintenance window, circuit breaker, max concurrent, cooldown, per-target rate, blast
radius.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from engine.records import Decision
from engine.runtime.journal import TargetCounts


@dataclass(frozen=True)
class MaintenanceWindow:
    """No automatic action on matching services between ``start`` and ``end`` (epoch seconds, UTC)."""

    services: tuple[str, ...]  # names or glob patterns ("inference-*")
    start: float
    end: float
    reason: str = ""

    def covers(self, service: str, now: float) -> bool:
        return self.start <= now < self.end and any(fnmatch.fnmatchcase(service, p) for p in self.services)


@dataclass(frozen=True)
class GlobalLimits:
    """Engine-wide limits from the configuration; they apply on top of each policy's own."""

    max_actions_per_hour: int = 30  # circuit breaker: above this, every action is refused
    max_failures_per_hour: int = 5  # circuit breaker: this many failed/rolled-back actions trips it
    max_concurrent: int = 4  # actions executing or being verified at once, all targets


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    safeguard: str | None = None
    reason: str = ""

    @classmethod
    def ok(cls) -> Verdict:
        return cls(True, None, "all safeguards passed")


def check(
    decision: Decision,
    counts: TargetCounts,
    *,
    now: float,
    limits: GlobalLimits,
    paused: bool = False,
    replicas: int = 1,
    maintenance: Sequence[MaintenanceWindow] = (),
) -> Verdict:
    """Decide whether ``decision`` may execute now. ``replicas``: how many the target runs (topology)."""
    if paused:
        return Verdict(False, "kill_switch", "the engine is paused (selfheal resume to re-enable actions)")
    for window in maintenance:
        if window.covers(decision.target, now):
            why = f": {window.reason}" if window.reason else ""
            return Verdict(False, "maintenance", f"{decision.target} is in a maintenance window{why}")
    spec = decision.safeguards
    per_hour = limits.max_actions_per_hour
    if spec.max_per_hour_global is not None:
        per_hour = min(per_hour, spec.max_per_hour_global)
    if counts.global_executions_last_hour >= per_hour:
        return Verdict(
            False,
            "circuit_breaker",
            f"{counts.global_executions_last_hour} actions in the last hour (limit {per_hour}, all targets)",
        )
    if counts.recent_failures >= limits.max_failures_per_hour:
        return Verdict(
            False,
            "circuit_breaker",
            f"{counts.recent_failures} failed actions in the last hour "
            f"(limit {limits.max_failures_per_hour})",
        )
    if counts.global_in_flight >= limits.max_concurrent:
        return Verdict(
            False,
            "max_concurrent",
            f"{counts.global_in_flight} actions in flight (engine limit {limits.max_concurrent})",
        )
    if spec.max_concurrent is not None and counts.rule_in_flight >= spec.max_concurrent:
        return Verdict(
            False,
            "max_concurrent",
            f"{counts.rule_in_flight} actions of rule {decision.rule or '?'} in flight "
            f"(limit {spec.max_concurrent})",
        )
    if spec.cooldown_s and counts.last_execution_ts is not None:
        elapsed = now - counts.last_execution_ts
        if elapsed < spec.cooldown_s:
            return Verdict(
                False,
                "cooldown",
                f"last action on {decision.target} {elapsed:.0f}s ago (cooldown {spec.cooldown_s:.0f}s)",
            )
    if spec.max_per_hour is not None and counts.executions_last_hour >= spec.max_per_hour:
        return Verdict(
            False,
            "rate_limit",
            f"{counts.executions_last_hour} actions on {decision.target} in the last hour "
            f"(limit {spec.max_per_hour})",
        )
    if spec.blast_radius is not None:
        total = max(replicas, 1)
        allowed = max(1, int(total * spec.blast_radius + 1e-9))
        touched = counts.in_flight_replicas + decision.replicas
        if touched > allowed:
            return Verdict(
                False,
                "blast_radius",
                f"{touched} of {total} replicas of {decision.target} would be affected at once "
                f"(limit {spec.blast_radius:.0%}: {allowed} at a time)",
            )
    return Verdict.ok()
