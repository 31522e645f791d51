"""Remediation policies: the YAML language, validation, compilation to durable-rules, the host.

Public face::

    load_policies(path) -> PolicySet              # every problem at once (SpecError)
    load_topology(path) -> Topology
    compile_policies(policy_set) -> CompiledPolicySet
    PolicyHost(policy_set | compiled, tick_seconds=60.0)
        .post(event) -> Decision | None         # engine.records' AnomalyEvent and Decision
        (a failing rule action raises PolicyRunError(PolicyError); .decisions keeps what was decided)
        .set_health(service, anomalous=..., maintenance=None); .health() -> {service: HealthFact}
    evaluate(policy_path, event_doc, facts=None) -> Evaluation    # offline `rules test`
"""

from __future__ import annotations

from engine.policy.compiler import CompiledPolicySet, compile_policies
from engine.policy.host import HealthFact, PolicyHost, PolicyRunError
from engine.policy.loader import BoundRule, PolicySet, load_policies, load_topology
from engine.policy.tester import Evaluation, evaluate

__all__ = [
    "BoundRule",
    "CompiledPolicySet",
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
