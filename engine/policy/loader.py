"""Load policy files into a checked ``PolicySet``, reporting every problem at once.

``load_policies("rules/")`` reads ``rules/topology.yaml`` and every other ``*.yaml`` in the folder
(``targets.yaml`` is the actions' file and ``golden/`` holds test events, so both are skipped).
Each rule is checked section by section so that a typo in ``when`` does not hide an unknown action
in ``then``; then references are resolved: services against the topology, actions and their
parameters against the registry (``inspect.signature(fn).bind``), templates against the event
fields, metrics against the platform's metric names, and bounds for satisfiability. Any problem
raises ``SpecError`` listing them all, each as ``file: path: message (hint)``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.errors import Problem, SpecError
from engine.policy.model import (
    RULE_SECTIONS,
    Bounds,
    InverseSpec,
    Policy,
    PolicyHeader,
    Risk,
    Rule,
    RuleHeader,
)
from engine.policy.templates import check_reference, is_template, references
from engine.policy.topology import TOPOLOGY_FILE, ServiceSpec, Topology, default_topology_path
from engine.records import SEVERITY_LEVEL
from engine.specs import did_you_mean, expect_mapping, problems_from, read_yaml

log = logging.getLogger(__name__)

SKIPPED_FILES = frozenset({TOPOLOGY_FILE, "targets.yaml"})
RULE_KEYS = (*RuleHeader.model_fields, *RULE_SECTIONS)


@dataclass(frozen=True)
class BoundRule:
    """A rule with everything resolved: its id, concrete services, risk and inverse."""

    id: str
    policy: Policy
    rule: Rule
    services: tuple[str, ...]
    risk: Risk
    inverse: InverseSpec | None
    order: int

    @property
    def requires_approval(self) -> bool:
        return self.risk in self.rule.approval.required_for


@dataclass(frozen=True)
class PolicySet:
    """Every policy of a folder (or one file) with the topology they share."""

    policies: tuple[Policy, ...]
    topology: Topology
    root: Path
    file_hashes: dict[str, str] = field(default_factory=dict)
    rules: tuple[BoundRule, ...] = ()

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over the source files: the policy version journaled with every decision (cached)."""
        digest = hashlib.sha256()
        for name, sha in sorted(self.file_hashes.items()):
            digest.update(f"{name}:{sha}\n".encode())
        return digest.hexdigest()

    def rule(self, rule_id: str) -> BoundRule:
        for bound in self.rules:
            if bound.id == rule_id:
                return bound
        raise KeyError(rule_id)


def load_topology(path: Path | str) -> Topology:
    """Parse and check ``topology.yaml`` (unknown dependencies and cycles are errors)."""
    topology, problems = _load_topology(Path(path))
    if problems or topology is None:
        raise SpecError(problems, hint="fix the topology file")
    return topology


def _load_topology(path: Path, content: bytes | None = None) -> tuple[Topology | None, list[Problem]]:
    file = str(path)
    if content is None and not path.is_file():
        return None, [
            Problem(file, "", "topology file not found", f"create {TOPOLOGY_FILE} beside the policies")
        ]
    data, problems = read_yaml(path, content)
    problems = problems or expect_mapping(data, file)
    if problems:
        return None, problems
    services = data.get("services")
    if isinstance(services, dict):  # one broken service must not hide the references of the others
        good: dict[str, Any] = {}
        for name, spec in services.items():
            try:
                good[name] = ServiceSpec.model_validate(spec if spec is not None else {})
            except ValidationError as exc:
                problems.extend(problems_from(exc, file=file, model=ServiceSpec, prefix=f"services.{name}"))
        data = {**data, "services": {**services, **{k: v.model_dump() for k, v in good.items()}}}
        for name in set(services) - set(good):
            data["services"].pop(name)
    try:
        topology = Topology.model_validate(data)
    except ValidationError as exc:
        return None, problems + problems_from(exc, file=file, model=Topology)
    for name, spec in topology.services.items():
        for i, dep in enumerate(spec.depends_on):
            if dep not in topology.services:
                problems.append(
                    Problem(
                        file,
                        f"services.{name}.depends_on[{i}]",
                        f"unknown service {dep!r}",
                        did_you_mean(dep, topology.services),
                    )
                )
    for cycle in topology.cycles():
        problems.append(
            Problem(
                file,
                "services",
                "dependency cycle: " + " -> ".join(cycle),
                "dependencies must form a DAG for dependency gating to find a root",
            )
        )
    return topology, problems


def policy_files(path: Path) -> list[Path]:
    """The policy files of a folder (sorted), or the file itself."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.name not in SKIPPED_FILES)


def load_policies(
    path: Path | str,
    *,
    topology: Path | str | None = None,
    contents: Mapping[str, bytes] | None = None,
) -> PolicySet:
    """Load and check every policy in ``path`` (a folder or one file). Raises SpecError with all problems.

    ``contents`` (file name -> bytes, e.g. ``{"topology.yaml": ..., "memory_leak.yaml": ...}``)
    gives the folder's files from memory: nothing under ``path`` is read, ``path`` only names the
    files in problems and in ``Policy.source``. A bundle passes the bytes it verified, so the files
    cannot change between the hash check and the parse.
    """
    root = Path(path)
    if contents is None and not root.exists():
        raise SpecError(
            [Problem(str(root), "", "no such file or folder")], hint="pass rules/ or rules/FILE.yaml"
        )
    if contents is not None:
        topo_path = root / TOPOLOGY_FILE
        topo_bytes = contents.get(TOPOLOGY_FILE)
        topo, problems = (
            _load_topology(topo_path, topo_bytes)
            if topo_bytes is not None
            else (None, [Problem(str(topo_path), "", "topology file not found")])
        )
        files = sorted(
            root / name
            for name in contents
            if Path(name).suffix in (".yaml", ".yml") and name not in SKIPPED_FILES
        )
    else:
        topo_path = Path(topology) if topology else default_topology_path(root)
        topo_bytes = topo_path.read_bytes() if topo_path.is_file() else None  # hashed and parsed once
        topo, problems = _load_topology(topo_path, topo_bytes)
        files = policy_files(root)
    if not files:
        problems.append(Problem(str(root), "", "no policy files (*.yaml) found"))
    policies: list[Policy] = []
    hashes: dict[str, str] = {}
    if topo_bytes is not None:
        hashes[topo_path.name] = hashlib.sha256(topo_bytes).hexdigest()
    for file in files:
        raw = contents[file.name] if contents is not None else file.read_bytes()
        hashes[file.name] = hashlib.sha256(raw).hexdigest()
        policy, found = _load_policy_file(file, topo, raw)
        problems.extend(found)
        if policy is not None:
            policies.append(policy)
    problems.extend(_duplicate_policies(policies))
    if problems:
        raise SpecError(problems, hint="fix the lines above, then run `selfheal rules validate` again")
    assert topo is not None
    bound = tuple(_bind_rules(policies, topo))
    log.info("loaded %d policies, %d rules from %s", len(policies), len(bound), root)
    return PolicySet(tuple(policies), topo, root, hashes, bound)


def _duplicate_policies(policies: list[Policy]) -> list[Problem]:
    seen: dict[str, str] = {}
    problems = []
    for policy in policies:
        if policy.policy in seen:
            problems.append(
                Problem(
                    policy.source,
                    "policy",
                    f"policy name {policy.policy!r} is also used in {seen[policy.policy]}",
                    "policy names must be unique",
                )
            )
        seen.setdefault(policy.policy, policy.source)
    return problems


def _bind_rules(policies: Iterable[Policy], topo: Topology) -> Iterable[BoundRule]:
    from engine.actions import get_action

    order = 0
    for policy in policies:
        for rule in policy.rules:
            if not rule.enabled:
                continue
            spec = get_action(rule.then.action)
            if rule.then.inverse == "none":
                inverse = None
            elif rule.then.inverse == "auto":
                inverse = InverseSpec(action=spec.inverse) if spec.inverse else None
            else:
                inverse = rule.then.inverse
            yield BoundRule(
                id=f"{policy.policy}/{rule.name}",
                policy=policy,
                rule=rule,
                services=tuple(topo.expand(rule.when.services)),
                risk=rule.then.risk or spec.risk,
                inverse=inverse,
                order=order,
            )
            order += 1


def _merge(defaults: dict[str, Any], own: Any) -> Any:
    """Key-by-key merge of a defaults section under a rule's own section."""
    if not isinstance(own, dict) or not defaults:
        return own if own is not None else copy.deepcopy(defaults) or None
    merged = copy.deepcopy(defaults)
    for key, value in own.items():
        merged[key] = _merge(merged[key], value) if isinstance(merged.get(key), dict) else value
    return merged


def _load_policy_file(
    path: Path, topo: Topology | None, content: bytes | None = None
) -> tuple[Policy | None, list[Problem]]:
    file = str(path)
    data, problems = read_yaml(path, content)
    problems = problems or expect_mapping(data, file)
    if problems:
        return None, problems
    header_data = {k: v for k, v in data.items() if k != "rules"}
    header: PolicyHeader | None = None
    try:
        header = PolicyHeader.model_validate(header_data)
    except ValidationError as exc:
        problems.extend(problems_from(exc, file=file, model=Policy))
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        misspelled = "rules" not in data and any(did_you_mean(str(k), ["rules"]) for k in data)
        if not misspelled:  # the unknown-key line already says "did you mean 'rules'?"
            problems.append(Problem(file, "rules", "expected a non-empty list of rules"))
        return None, problems
    defaults = header.defaults.model_dump() if header else {}
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for i, raw in enumerate(raw_rules):
        rule, found = _load_rule(raw, i, file, defaults, topo)
        problems.extend(found)
        if rule is not None:
            if rule.name in names:
                problems.append(
                    Problem(
                        file,
                        f"rules[{i}].name",
                        f"rule name {rule.name!r} repeats rules[{names[rule.name]}]",
                        "rule names are unique within a policy",
                    )
                )
            names.setdefault(rule.name, i)
            rules.append(rule)
    if problems or header is None:
        return None, problems
    return Policy(**header.model_dump(), rules=rules, source=file), []


def _load_rule(
    raw: Any, i: int, file: str, defaults: dict[str, Any], topo: Topology | None
) -> tuple[Rule | None, list[Problem]]:
    where = f"rules[{i}]"
    problems = expect_mapping(raw, file, where)
    if problems:
        return None, problems
    for key in raw:
        if key not in RULE_KEYS:
            problems.append(
                Problem(
                    file,
                    where,
                    f"unknown key {key!r}",
                    did_you_mean(str(key), RULE_KEYS) or f"allowed here: {', '.join(RULE_KEYS)}",
                )
            )
    header: dict[str, Any] = {k: raw[k] for k in RuleHeader.model_fields if k in raw}
    try:
        RuleHeader.model_validate(header)
    except ValidationError as exc:
        problems.extend(problems_from(exc, file=file, model=RuleHeader, prefix=where))
    sections: dict[str, BaseModel] = {}
    for name, model in RULE_SECTIONS.items():
        value = _merge(defaults.get(name, {}), raw.get(name))
        if value is None:
            if name in ("when", "then", "verify"):
                problems.append(
                    Problem(
                        file,
                        where,
                        f"missing required key {name!r}",
                        "set it in the rule or under defaults" if name == "verify" else None,
                    )
                )
            continue
        try:
            sections[name] = model.model_validate(value)
        except ValidationError as exc:
            problems.extend(problems_from(exc, file=file, model=model, prefix=f"{where}.{name}"))
    if topo is not None:
        problems.extend(_semantic(sections, file, where, topo))
    if problems:
        return None, problems
    return Rule.model_validate(
        {**header, **{k: v.model_dump(by_alias=True) for k, v in sections.items()}}
    ), []


def _bounds(
    b: Bounds | None, file: str, path: str, lo: float | None = None, hi: float | None = None
) -> list[Problem]:
    if b is None:
        return []
    if b.min is not None and b.max is not None and b.min > b.max:
        return [
            Problem(file, path, f"unsatisfiable: min {b.min} > max {b.max}", "swap them or widen the range")
        ]
    if lo is not None and b.max is not None and b.max < lo:
        return [Problem(file, path, f"unsatisfiable: max {b.max} is below {lo}, the lowest possible value")]
    if hi is not None and b.min is not None and b.min > hi:
        return [
            Problem(
                file,
                path,
                f"unsatisfiable: min {b.min} is above {hi}, the highest possible value",
                "scores are calibrated to [0, 1]",
            )
        ]
    return []


def _metric(name: str, file: str, path: str, topo: Topology) -> list[Problem]:
    if name in topo.metrics:
        return []
    return [
        Problem(
            file,
            path,
            f"unknown metric {name!r}",
            did_you_mean(name, topo.metrics) or "declare it under metrics: in topology.yaml",
        )
    ]


def _semantic(sections: dict[str, Any], file: str, where: str, topo: Topology) -> list[Problem]:
    from engine.actions.registry import available_actions

    problems: list[Problem] = []
    actions = available_actions()
    when = sections.get("when")
    if when is not None:
        p = f"{where}.when"
        for j, pattern in enumerate(when.services):
            if not topo.expand([pattern]):
                problems.append(
                    Problem(
                        file,
                        f"{p}.services[{j}]",
                        f"unknown service {pattern!r}",
                        did_you_mean(pattern, topo.services) or f"services: {', '.join(topo.names)}",
                    )
                )
        problems += _bounds(when.score, file, f"{p}.score", 0.0, 1.0)
        if (
            when.severity
            and when.severity.min
            and when.severity.max
            and (SEVERITY_LEVEL[when.severity.min] > SEVERITY_LEVEL[when.severity.max])
        ):
            problems.append(
                Problem(
                    file, f"{p}.severity", f"unsatisfiable: min {when.severity.min} > max {when.severity.max}"
                )
            )
        for metric, bounds in when.metrics.items():
            problems += _metric(metric, file, f"{p}.metrics.{metric}", topo)
            problems += _bounds(bounds, file, f"{p}.metrics.{metric}")
        for j, metric in enumerate(when.contributing.any if when.contributing else ()):
            problems += _metric(metric, file, f"{p}.contributing.any[{j}]", topo)
        per = when.persistence
        if per is not None and per.count is not None and per.of is not None and per.count > per.of:
            problems.append(
                Problem(
                    file,
                    f"{p}.persistence",
                    f"unsatisfiable: {per.count} of the last {per.of} ticks",
                    "count must be <= of",
                )
            )
    then = sections.get("then")
    spec = None
    if then is not None:
        p = f"{where}.then"
        spec = actions.get(then.action)
        if spec is None:
            problems.append(
                Problem(
                    file,
                    f"{p}.action",
                    f"unknown action {then.action!r}",
                    did_you_mean(then.action, actions) or f"registered: {', '.join(actions)}",
                )
            )
        else:
            problems += _params(spec, then.params, file, f"{p}.params", topo)
        for ref in references(then.target):
            if (msg := check_reference(ref, set(topo.metrics))) is not None:
                problems.append(Problem(file, f"{p}.target", msg))
        if not is_template(then.target) and then.target not in topo.services:
            problems.append(
                Problem(
                    file,
                    f"{p}.target",
                    f"unknown service {then.target!r}",
                    did_you_mean(then.target, topo.services),
                )
            )
        if isinstance(then.inverse, InverseSpec):
            inv = actions.get(then.inverse.action)
            if inv is None:
                problems.append(
                    Problem(
                        file,
                        f"{p}.inverse.action",
                        f"unknown action {then.inverse.action!r}",
                        did_you_mean(then.inverse.action, actions),
                    )
                )
            else:
                problems += _params(inv, then.inverse.params, file, f"{p}.inverse.params", topo)
    verify = sections.get("verify")
    if verify is not None:
        p = f"{where}.verify"
        for metric, bounds in verify.steady_state.metrics.items():
            problems += _metric(metric, file, f"{p}.steady_state.metrics.{metric}", topo)
            problems += _bounds(bounds, file, f"{p}.steady_state.metrics.{metric}")
        if verify.on_failure in ("rollback", "both") and then is not None and spec is not None:
            has_inverse = isinstance(then.inverse, InverseSpec) or (then.inverse == "auto" and spec.inverse)
            if not has_inverse:
                problems.append(
                    Problem(
                        file,
                        f"{p}.on_failure",
                        f"{verify.on_failure!r} needs an inverse, and {then.action} has none",
                        "use on_failure: escalate, or give then.inverse",
                    )
                )
    unless = sections.get("unless")
    if unless is not None:
        for j, window in enumerate(unless.maintenance_windows):
            if window.from_ is not None and window.until is not None and window.from_ >= window.until:
                problems.append(
                    Problem(
                        file,
                        f"{where}.unless.maintenance_windows[{j}]",
                        "unsatisfiable: from is not before until",
                    )
                )
    return problems


def _params(spec: Any, params: dict[str, Any], file: str, path: str, topo: Topology) -> list[Problem]:
    problems: list[Problem] = []
    templated = {k for k, v in params.items() if is_template(v)}
    for name in sorted(spec.literal & templated):
        problems.append(
            Problem(
                file,
                f"{path}.{name}",
                f"{name!r} of {spec.name} must be literal: ${{...}} templates are not allowed "
                "there (event data must never become arguments of a program; the action "
                "passes the event through its environment instead)",
            )
        )
    for name, value in params.items():
        for ref in references(value):
            if (msg := check_reference(ref, set(topo.metrics))) is not None:
                problems.append(Problem(file, f"{path}.{name}", msg))
    for suffix, message in spec.bind_problems(params, skip_values=templated):
        problems.append(Problem(file, f"{path}.{suffix}" if suffix else path, message))
    return problems
