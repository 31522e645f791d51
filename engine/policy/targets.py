"""Policies against the targets file: what each asks of the other, checked before anything runs.

Here rather than in ``engine.actions``: the policies know the actions (they name them and bind their
parameters), not the other way round.
"""

from __future__ import annotations

from pathlib import Path

from engine.actions.registry import available_actions
from engine.actions.targets import TargetsConfig, load_targets, targets_for_policy
from engine.errors import Problem, SpecError
from engine.policy.loader import PolicySet, load_policies
from engine.policy.model import InverseSpec
from engine.specs import did_you_mean


def check_policies(config: TargetsConfig, policy_set: PolicySet, file: Path | str) -> list[Problem]:
    """What the policies and this targets file (``file``, present or not) ask of each other.

    Every service the file names is in the topology, and every action of every rule passes its
    ``preflight`` against this file (the ``command`` action's program is in ``commands.allow``):
    refused at ``rules validate`` and when a bundle is built or loaded, never mid-incident.
    """
    problems: list[Problem] = []
    known = policy_set.topology.services
    for service in config.services:
        if service not in known:
            problems.append(
                Problem(str(file), f"services.{service}", "unknown service", did_you_mean(service, known))
            )
    actions = available_actions()
    hint = f"edit {file}" if Path(file).is_file() else f"no {Path(file).name} beside the policies: create it"
    for policy in policy_set.policies:
        for i, rule in enumerate(policy.rules):
            calls = [("then", rule.then.action, rule.then.params)]
            if isinstance(rule.then.inverse, InverseSpec):
                calls.append(("then.inverse", rule.then.inverse.action, rule.then.inverse.params))
            for where, name, params in calls:
                spec = actions.get(name)
                for suffix, message in spec.preflight(params, config) if spec and spec.preflight else ():
                    problems.append(
                        Problem(policy.source, f"rules[{i}].{where}.params.{suffix}", message, hint)
                    )
    return problems


def check_folder(path: Path | str) -> tuple[PolicySet | None, list[Problem]]:
    """Everything ``selfheal rules validate`` checks: the policies and topology, the targets file
    beside them (absent: the engine's defaults, no commands allowed) and what each asks of the other.

    Returns the policy set (None when it does not load) and every problem found.
    """
    problems: list[Problem] = []
    policy_set: PolicySet | None = None
    try:
        policy_set = load_policies(path)
    except SpecError as exc:
        problems.extend(exc.problems)
    targets = targets_for_policy(Path(path))
    config: TargetsConfig | None = TargetsConfig()
    if targets.is_file():
        try:
            config = load_targets(targets)
        except SpecError as exc:
            problems.extend(exc.problems)
            config = None
    if policy_set is not None and config is not None:
        problems.extend(check_policies(config, policy_set, targets))
    return policy_set, problems
