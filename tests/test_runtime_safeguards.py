"""Safeguards as a pure function: each limit refuses with its own name and reason, and only then."""

from __future__ import annotations

import pytest

from engine.records import Decision, SafeguardSpec
from engine.runtime.journal import TargetCounts
from engine.runtime.safeguards import GlobalLimits, MaintenanceWindow, check

NOW = 1_800_000_000.0
QUIET = TargetCounts(None, 0, 0, 0, 0, 0)
LIMITS = GlobalLimits(max_actions_per_hour=10, max_failures_per_hour=3, max_concurrent=2)


def _d(replicas: int = 1, **spec: object) -> Decision:
    return Decision(
        id="d",
        event_id="e",
        service="inference-a",
        target="inference-a",
        action="restart",
        params={},
        replicas=replicas,
        safeguards=SafeguardSpec(**spec),  # type: ignore[arg-type]
    )


def _counts(**kw: object) -> TargetCounts:
    base = dict(
        last_execution_ts=None,
        executions_last_hour=0,
        in_flight_replicas=0,
        global_executions_last_hour=0,
        global_in_flight=0,
        recent_failures=0,
    )
    base.update(kw)
    return TargetCounts(**base)  # type: ignore[arg-type]


def test_quiet_platform_allows() -> None:
    verdict = check(
        _d(cooldown_s=600, max_per_hour=3, blast_radius=0.5), QUIET, now=NOW, limits=LIMITS, replicas=4
    )
    assert verdict.allowed and verdict.safeguard is None


def test_kill_switch_refuses_everything() -> None:
    verdict = check(_d(), QUIET, now=NOW, limits=LIMITS, paused=True)
    assert (verdict.allowed, verdict.safeguard) == (False, "kill_switch")


@pytest.mark.parametrize(
    ("elapsed", "allowed"), [(10.0, False), (599.0, False), (600.0, True), (3600.0, True)]
)
def test_cooldown_per_target(elapsed: float, allowed: bool) -> None:
    verdict = check(_d(cooldown_s=600), _counts(last_execution_ts=NOW - elapsed), now=NOW, limits=LIMITS)
    assert verdict.allowed is allowed
    if not allowed:
        assert verdict.safeguard == "cooldown" and "cooldown 600s" in verdict.reason


def test_max_per_hour_per_target() -> None:
    assert check(_d(max_per_hour=3), _counts(executions_last_hour=2), now=NOW, limits=LIMITS).allowed
    verdict = check(_d(max_per_hour=3), _counts(executions_last_hour=3), now=NOW, limits=LIMITS)
    assert verdict.safeguard == "rate_limit"


def test_circuit_breaker_on_global_rate_and_on_failures() -> None:
    assert check(_d(), _counts(global_executions_last_hour=9), now=NOW, limits=LIMITS).allowed
    assert (
        check(_d(), _counts(global_executions_last_hour=10), now=NOW, limits=LIMITS).safeguard
        == "circuit_breaker"
    )
    assert (
        check(
            _d(max_per_hour_global=5), _counts(global_executions_last_hour=5), now=NOW, limits=LIMITS
        ).safeguard
        == "circuit_breaker"
    )
    assert check(_d(), _counts(recent_failures=3), now=NOW, limits=LIMITS).safeguard == "circuit_breaker"


def test_max_concurrent_engine_wide_and_per_rule() -> None:
    assert check(_d(), _counts(global_in_flight=1), now=NOW, limits=LIMITS).allowed
    assert check(_d(), _counts(global_in_flight=2), now=NOW, limits=LIMITS).safeguard == "max_concurrent"
    # the policy's limit counts executions of the same rule, wherever they run
    assert check(_d(max_concurrent=1), _counts(global_in_flight=1), now=NOW, limits=LIMITS).allowed
    verdict = check(
        _d(max_concurrent=1), _counts(global_in_flight=1, rule_in_flight=1), now=NOW, limits=LIMITS
    )
    assert verdict.safeguard == "max_concurrent" and "of rule" in verdict.reason


def test_blast_radius_counts_replicas_in_flight() -> None:
    # 4 replicas at 50%: two at a time.
    assert check(
        _d(blast_radius=0.5), _counts(in_flight_replicas=1), now=NOW, limits=LIMITS, replicas=4
    ).allowed
    verdict = check(_d(blast_radius=0.5), _counts(in_flight_replicas=2), now=NOW, limits=LIMITS, replicas=4)
    assert verdict.safeguard == "blast_radius" and "3 of 4" in verdict.reason
    assert check(_d(replicas=3, blast_radius=0.5), QUIET, now=NOW, limits=LIMITS, replicas=4).safeguard == (
        "blast_radius"
    )
    # A single replica can always be acted on alone, never twice at once.
    assert check(_d(blast_radius=0.5), QUIET, now=NOW, limits=LIMITS, replicas=1).allowed
    assert not check(_d(blast_radius=0.5), _counts(in_flight_replicas=1), now=NOW, limits=LIMITS).allowed


def test_maintenance_window_by_glob_and_time() -> None:
    window = MaintenanceWindow(("inference-*",), NOW - 60, NOW + 60, "GPU driver upgrade")
    verdict = check(_d(), QUIET, now=NOW, limits=LIMITS, maintenance=[window])
    assert verdict.safeguard == "maintenance" and "GPU driver upgrade" in verdict.reason
    assert check(_d(), QUIET, now=NOW + 61, limits=LIMITS, maintenance=[window]).allowed
    other = MaintenanceWindow(("vector-db",), NOW - 60, NOW + 60)
    assert check(_d(), QUIET, now=NOW, limits=LIMITS, maintenance=[other]).allowed


def test_first_refusal_wins_in_documented_order() -> None:
    everything = _counts(
        last_execution_ts=NOW,
        executions_last_hour=99,
        global_executions_last_hour=99,
        global_in_flight=99,
        in_flight_replicas=99,
        recent_failures=99,
    )
    spec = dict(cooldown_s=600, max_per_hour=1, blast_radius=0.1)
    assert check(_d(**spec), everything, now=NOW, limits=LIMITS, paused=True).safeguard == "kill_switch"
    assert check(_d(**spec), everything, now=NOW, limits=LIMITS).safeguard == "circuit_breaker"
