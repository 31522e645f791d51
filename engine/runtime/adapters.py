"""Adapters from the project's parts to the engine's seams, and the one place that assembles them.

- ``PolicyHostEngine`` drives ``engine.policy.host.PolicyHost`` (durable-rules) as a ``PolicyEngine``
  and turns its decisions into the runtime's ``Decision`` records (limits, verification, approval);
- ``RegistryActions`` runs actions through ``engine.actions.execute`` (registry + targets file);
- ``assemble`` builds ``EngineComponents`` from a fitted pipeline, a policy folder and a targets file:
  what a bundle loader calls after verifying the bundle, and what tests call directly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from engine.runtime.components import EngineComponents, PipelineLike, ServiceInfo
from engine.runtime.model import ActionCall, AnomalyEvent, ApprovalSpec, Decision, SafeguardSpec, VerifySpec

log = logging.getLogger(__name__)

_ON_FAILURE = {"escalate": ("escalate",), "rollback": ("rollback",), "both": ("escalate", "rollback")}


class PolicyHostEngine:
    """``PolicyEngine`` over a durable-rules ``PolicyHost``."""

    def __init__(self, host: Any) -> None:
        self.host = host
        policy_set = host.policy_set
        self.version = policy_set.fingerprint[:12]

    def decide(self, event: AnomalyEvent) -> list[Decision]:
        decision = self.host.post(_policy_event(event))
        return [] if decision is None else [to_runtime_decision(decision, event, self.version)]

    def set_health(self, service: str, anomalous: bool, score: float) -> None:
        self.host.set_health(service, anomalous=anomalous)

    def replay(self, event: AnomalyEvent) -> None:
        self.host.post(_policy_event(event))  # decisions were journaled the first time; drop them


def _policy_event(event: AnomalyEvent) -> Any:
    from engine.policy.events import AnomalyEvent as PolicyEvent

    return PolicyEvent(
        id=event.id,
        service=event.service,
        detector=event.detector,
        score=event.score,
        ts=event.window_end,
        threshold=event.threshold,
        metrics=dict(event.metrics),
        contributing=event.contributing_metrics,
        window_start=event.window_start,
        window_end=event.window_end,
        bundle_version=event.bundle_version,
    )


def to_runtime_decision(decision: Any, event: AnomalyEvent, fingerprint: str) -> Decision:
    """The policy host's decision as the record the engine enforces and journals."""
    s = decision.safeguards
    v = decision.verify
    a = decision.approval
    return Decision(
        id=f"dec-{decision.id[:16]}",
        event_id=event.id,
        service=event.service,
        target=decision.target,
        action=decision.action,
        params=dict(decision.params),
        risk=decision.risk,
        policy=decision.policy,
        policy_version=f"{decision.policy_version}+{fingerprint}",
        rule=decision.rule_id,
        safeguards=SafeguardSpec(
            cooldown_s=float(s.cooldown),
            max_per_hour=s.max_per_hour,
            max_per_hour_global=s.max_per_hour_global,
            max_concurrent=s.max_concurrent,
            blast_radius=s.blast_radius,
        ),
        verify=VerifySpec(
            deadline_s=float(v.deadline),
            score_below=v.steady_state.score_below,
            metrics={k: (b.min, b.max) for k, b in v.steady_state.metrics.items()},
            on_failure=_ON_FAILURE[v.on_failure],
            escalate_to=v.escalate_to,
        ),
        approval=ApprovalSpec(
            required=bool(decision.requires_approval),
            ttl_s=float(a.ttl),
            on_expiry=a.on_expiry,
            approvers=tuple(a.approvers),
        ),
        inverse=None
        if decision.inverse is None
        else ActionCall(decision.inverse.action, dict(decision.inverse.params)),
        bundle_version=event.bundle_version,
        detector=event.detector,
        detector_version=event.detector_version,
        window_start=event.window_start,
        window_end=event.window_end,
    )


class RegistryActions:
    """``ActionRunner`` over the action registry; backends per service come from the targets file.

    ``timeout_s`` (the engine's ``action_timeout_s``) caps each request or program of the call; a
    target's own shorter ``timeout_s`` in the targets file still applies.
    """

    def __init__(self, targets: Any = None) -> None:
        from engine.actions import TargetsConfig

        self.targets = targets if targets is not None else TargetsConfig()

    def run(self, call: ActionCall, *, target: str, idempotency_key: str, timeout_s: float) -> Any:
        from engine.actions import execute

        return execute(
            call.action, call.params, target, idempotency_key, settings=self.targets, timeout_s=timeout_s
        )


def assemble(
    pipeline: PipelineLike,
    rules: Path | str,
    *,
    targets: Path | str | Any | None = None,
    topology: Path | str | None = None,
    bundle_version: str = "dev",
    detector_version: str = "dev",
) -> EngineComponents:
    """Components from a fitted pipeline, a policy folder (or file) and a targets file or config."""
    from engine.actions import load_targets
    from engine.policy.host import PolicyHost
    from engine.policy.loader import load_policies

    policy_set = load_policies(rules, topology=topology)
    host = PolicyHost(policy_set, tick_seconds=float(pipeline.feature_spec.interval))
    if isinstance(targets, str | Path):
        targets = load_targets(targets)
    elif targets is None:
        from engine.actions.targets import targets_for_policy

        beside = targets_for_policy(Path(rules))
        targets = load_targets(beside) if beside.is_file() else None
    topo = {
        name: ServiceInfo(tuple(spec.depends_on), spec.replicas, spec.tier)
        for name, spec in policy_set.topology.services.items()
    }
    return EngineComponents(
        pipeline=pipeline,
        policies=PolicyHostEngine(host),
        actions=RegistryActions(targets),
        topology=topo,
        bundle_version=bundle_version,
        detector_version=detector_version,
    )
