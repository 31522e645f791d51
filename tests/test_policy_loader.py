"""Policy validation: every problem at once, each with file, path and a useful hint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO

from engine.errors import SpecError
from engine.policy import load_policies

TOPOLOGY = REPO / "rules" / "topology.yaml"

GOOD_RULE = """
  - name: restart-leaking
    when:
      services: [inference-a]
      score: {min: 0.7}
    then:
      action: restart
    verify:
      steady_state: {score_below: 0.5}
      deadline: 10m
"""


def write_policy(tmp_path: Path, body: str, name: str = "p.yaml") -> Path:
    shutil.copy(TOPOLOGY, tmp_path / "topology.yaml")
    path = tmp_path / name
    path.write_text(body)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_policies(path)
    return [str(p) for p in info.value.problems]


def test_shipped_rules_are_clean() -> None:
    policy_set = load_policies(REPO / "rules")
    kinds = {p.policy for p in policy_set.policies}
    assert {"latency-creep", "memory-leak", "stale-index", "bad-deploy", "dependency-outage"} <= kinds
    assert len(policy_set.fingerprint) == 64


def test_three_mistakes_give_three_precise_lines(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        """
policy: three-mistakes
rules:
  - name: restart-leaking
    when:
      servces: [inference-a]
      score: {min: 0.7}
    then:
      action: restrat
    verify:
      steady_state: {score_below: 0.5}
      deadline: 10m
  - name: scale-out
    when:
      services: [inferense-a]
    then:
      action: scale
      params: {delta: 1}
    verify:
      steady_state: {score_below: 0.5}
      deadline: 10m
""",
    )
    lines = problems_of(path)
    assert lines == [
        f"{path}: rules[0].when: unknown key 'servces' (did you mean 'services'?)",
        f"{path}: rules[0].then.action: unknown action 'restrat' (did you mean 'restart'?)",
        f"{path}: rules[1].when.services[0]: unknown service 'inferense-a' (did you mean 'inference-a'?)",
    ]


def test_params_bind_to_the_action_signature(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        """
policy: params
rules:
  - name: a
    when: {services: [inference-a]}
    then:
      action: scale
      params: {replica: 3}
    verify: {steady_state: {score_below: 0.5}, deadline: 10m}
  - name: b
    when: {services: [inference-a]}
    then:
      action: scale
      params: {replicas: many}
    verify: {steady_state: {score_below: 0.5}, deadline: 10m}
  - name: c
    when: {services: [inference-a]}
    then:
      action: shift_traffic
    verify: {steady_state: {score_below: 0.5}, deadline: 10m}
""",
    )
    lines = problems_of(path)
    assert any(
        "rules[0].then.params.replica: 'replica' is not a parameter of scale (did you mean 'replicas'?)" in x
        for x in lines
    ), lines
    assert any(
        "rules[1].then.params.replicas: 'many' is not a valid replicas for scale" in x for x in lines
    ), lines
    assert any(
        "rules[2].then.params: parameters do not fit shift_traffic(weights:" in x and "missing" in x
        for x in lines
    ), lines


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("score: {min: 0.9, max: 0.2}", "rules[0].when.score: unsatisfiable: min 0.9 > max 0.2"),
        ("score: {min: 1.5}", "rules[0].when.score: unsatisfiable: min 1.5 is above 1.0"),
        ("persistence: {count: 5, of: 3}", "rules[0].when.persistence: unsatisfiable: 5 of the last 3 ticks"),
        ("metrics: {memory_util: {min: 0.9, max: 0.5}}", "rules[0].when.metrics.memory_util: unsatisfiable"),
        ("metrics: {memory_utl: {min: 0.9}}", "unknown metric 'memory_utl' (did you mean 'memory_util'?)"),
        (
            "severity: {min: critical, max: low}",
            "rules[0].when.severity: unsatisfiable: min critical > max low",
        ),
        ("metrics: {memory_util: {}}", "rules[0].when.metrics.memory_util: a range needs min and/or max"),
        ("persistence: {count: 2, for: 5m}", "use either {count, of} or {for}, not both"),
        ("persistence: {for: soon}", "'soon' is not a duration"),
        ("detector: 'if[orest'", "detector pattern 'if[orest' may use"),
    ],
)
def test_unsatisfiable_or_malformed_when(tmp_path: Path, snippet: str, expected: str) -> None:
    path = write_policy(
        tmp_path,
        f"""
policy: bad-when
rules:
  - name: r
    when:
      services: [inference-a]
      {snippet}
    then: {{action: restart}}
    verify: {{steady_state: {{score_below: 0.5}}, deadline: 10m}}
""",
    )
    lines = problems_of(path)
    assert len(lines) == 1 and expected in lines[0], lines


def test_templates_and_rollback_need_known_fields_and_an_inverse(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        """
policy: templates
rules:
  - name: r
    when: {services: [vector-db]}
    then:
      action: refresh_index
      params: {index: "${servce}-main"}
    verify: {steady_state: {score_below: 0.5}, deadline: 10m, on_failure: rollback}
""",
    )
    lines = problems_of(path)
    assert any("unknown template field ${servce} (did you mean 'service'?)" in x for x in lines), lines
    assert any("'rollback' needs an inverse, and refresh_index has none" in x for x in lines), lines


def test_unknown_rule_keys_missing_sections_and_yaml_errors(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path, "policy: x\nrules:\n  - name: r\n    wen: {}\n    then: {action: restart}\n"
    )
    lines = problems_of(path)
    assert f"{path}: rules[0]: unknown key 'wen' (did you mean 'when'?)" in lines
    assert any("rules[0]: missing required key 'when'" in x for x in lines)
    assert any("missing required key 'verify' (set it in the rule or under defaults)" in x for x in lines)
    broken = write_policy(tmp_path, "policy: x\nrules: [\n", name="broken.yaml")
    (bad,) = problems_of(broken)
    assert "not valid YAML" in bad and "line" in bad


def test_defaults_merge_key_by_key(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path,
        """
policy: defaults
defaults:
  safeguards: {cooldown: 1h, max_per_hour: 1}
  verify: {steady_state: {score_below: 0.4}, deadline: 5m}
rules:
  - name: r
    when: {services: ["inference-*"]}
    then: {action: restart}
    safeguards: {max_per_hour: 2}
""",
    )
    (bound,) = load_policies(path).rules
    assert bound.rule.safeguards.cooldown == 3600 and bound.rule.safeguards.max_per_hour == 2
    assert bound.rule.verify.deadline == 300
    assert bound.services == ("inference-a", "inference-b")
    assert bound.risk == "medium" and not bound.requires_approval


def test_topology_problems(tmp_path: Path) -> None:
    (tmp_path / "topology.yaml").write_text(
        "services:\n  a: {depends_on: [b]}\n  b: {depends_on: [a, zz]}\n  c: {replica: 2}\n"
    )
    (tmp_path / "p.yaml").write_text("policy: p\nrules: []\n")
    lines = problems_of(tmp_path)
    assert any("services.b.depends_on[1]: unknown service 'zz'" in x for x in lines), lines
    assert any("dependency cycle" in x for x in lines), lines
    assert any("services.c: unknown key 'replica' (did you mean 'replicas'?)" in x for x in lines), lines
    assert any("rules: expected a non-empty list of rules" in x for x in lines), lines


def test_duplicate_names(tmp_path: Path) -> None:
    lines = problems_of(write_policy(tmp_path, "policy: same\nrules:" + GOOD_RULE + GOOD_RULE))
    assert any("rules[1].name: rule name 'restart-leaking' repeats rules[0]" in x for x in lines), lines
    folder = tmp_path / "folder"
    folder.mkdir()
    write_policy(folder, "policy: same\nrules:" + GOOD_RULE, "one.yaml")
    write_policy(folder, "policy: same\nrules:" + GOOD_RULE, "two.yaml")
    lines = problems_of(folder)
    assert any("two.yaml: policy: policy name 'same' is also used in" in x for x in lines), lines


def test_a_misspelled_top_level_key_is_one_line(tmp_path: Path) -> None:
    path = write_policy(tmp_path, "policy: x\nrule:" + GOOD_RULE + "owner: me\nsource: hacked\n")
    assert problems_of(path) == [
        f"{path}: unknown key 'rule' (did you mean 'rules'?)",
        f"{path}: unknown key 'source' (allowed here: policy, version, description, owner, defaults, rules)",
    ]
