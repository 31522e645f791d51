"""Remediation policies: the YAML language, validation, compilation to durable-rules, the host.

Public face::

    load_policies(path) -> PolicySet              # every problem at once (SpecError)
    load_topology(path) -> Topology
    compile_policies(policy_set) -> CompiledPolicySet
    PolicyHost(policy_set | compiled, tick_seconds=60.0)
        .post(event) -> Decision | None; .post_tick(events, healthy=()) -> list[Decision]
        (rule failures raise PolicyRunError(PolicyError) after every event was posted; its
        .decisions keep the decisions made, .errors one PolicyError per failed event)
        .set_health(service, anomalous=..., maintenance=None); .snapshot(); .restore(snapshot)
    AnomalyEvent, HealthFact, Decision
    evaluate(policy_path, event_doc, facts=None) -> Evaluation    # offline `rules test`
"""

from __future__ import annotations

from engine.policy.compiler import CompiledPolicySet, compile_policies
from engine.policy.events import AnomalyEvent, HealthFact
from engine.policy.host import Decision, PolicyHost, PolicyRunError
from engine.policy.loader import BoundRule, PolicySet, load_policies, load_topology
from engine.policy.tester import Evaluation, evaluate

__all__ = [
    "AnomalyEvent",
    "BoundRule",
    "CompiledPolicySet",
    "Decision",
    "Evaluation",
    "HealthFact",
    "PolicyHost",
    "PolicyRunError",
    "PolicySet",
    "compile_policies",
    "evaluate",
    "load_policies",
    "load_topology",
]
