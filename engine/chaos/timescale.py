"""Policy durations in platform time, enforced by an engine that runs on the wall clock.

The engine measures cooldowns, approval TTLs and verification deadlines with ``time.time()``; a
policy states them in platform time ("approve within 15 minutes"). When the simulated platform
runs ``speed`` times faster than the wall, a 15-minute TTL must last 15/speed wall minutes, or a
game day would wait a real quarter of an hour for an expiry. ``TimeScaledPolicies`` wraps the
engine's ``PolicyEngine`` seam and divides those durations by ``speed`` in every decision, so the
engine enforces exactly what the policy says, in the platform's time. Hourly rate limits stay per
wall hour (stricter in platform time); a game day stays far below them.
"""

from __future__ import annotations

import dataclasses

from engine.records import AnomalyEvent, Decision
from engine.runtime.policies import PolicyEngine


class TimeScaledPolicies:
    """A ``PolicyEngine`` whose decisions carry durations converted from platform to wall seconds."""

    def __init__(self, inner: PolicyEngine, speed: float) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.inner = inner
        self.speed = float(speed)
        self.version = inner.version

    def post(self, event: AnomalyEvent) -> Decision | None:
        decision = self.inner.post(event)
        return None if decision is None else self.scale(decision)

    def set_health(self, service: str, *, anomalous: bool) -> None:
        self.inner.set_health(service, anomalous=anomalous)

    def scale(self, decision: Decision) -> Decision:
        k = self.speed
        verify = decision.verify
        if verify is not None:
            verify = dataclasses.replace(
                verify, deadline_s=verify.deadline_s / k, settle_s=verify.settle_s / k
            )
        return dataclasses.replace(
            decision,
            safeguards=dataclasses.replace(
                decision.safeguards, cooldown_s=decision.safeguards.cooldown_s / k
            ),
            verify=verify,
            approval=dataclasses.replace(decision.approval, ttl_s=decision.approval.ttl_s / k),
        )
