"""Golden events beside every shipped policy, and the `rules validate|test` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from conftest import REPO
from typer.testing import CliRunner

from engine.policy import evaluate, load_policies
from engine.policy.commands import register

RULES = REPO / "rules"
GOLDEN = sorted((RULES / "golden").glob("*/*.json"))


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(_app(), list(args))
    return result.exit_code, result.stdout, result.stderr


def test_every_shipped_policy_has_golden_cases_that_match_and_that_do_not() -> None:
    for policy in load_policies(RULES).policies:
        folder = RULES / "golden" / Path(policy.source).stem
        expects = [json.loads(p.read_text())["expect"]["matched"] for p in folder.glob("*.json")]
        assert True in expects and False in expects, f"{folder} needs a matching and a non-matching case"


@pytest.mark.parametrize("case", GOLDEN, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_case(case: Path) -> None:
    doc = json.loads(case.read_text())
    alone = evaluate(RULES / f"{case.parent.name}.yaml", doc)
    assert alone.mismatches == [], alone.reasons
    together = evaluate(RULES, doc)  # the engine loads the whole folder: no other policy steals it
    assert together.mismatches == [], together.reasons


def test_validate_clean_folder_exits_0() -> None:
    code, out, _ = run("rules", "validate", str(RULES))
    assert code == 0 and out.startswith("ok: 5 policies")


def test_validate_invalid_exits_2_with_every_problem(tmp_path: Path) -> None:
    shutil.copy(RULES / "topology.yaml", tmp_path / "topology.yaml")
    (tmp_path / "bad.yaml").write_text(
        "policy: bad\nrules:\n  - name: r\n    when: {services: [gatewy], score: {min: 2}}\n"
        "    then: {action: reboot}\n    verify: {steady_state: {score_below: 0.5}, deadline: 1m}\n"
    )
    (tmp_path / "targets.yaml").write_text("defaults: {backend: kubernetes}\nservices: {gateway: {}}\n")
    code, _, err = run("rules", "validate", str(tmp_path))
    assert code == 2
    assert "unknown service 'gatewy' (did you mean 'gateway'?)" in err
    assert "unsatisfiable: min 2.0 is above 1.0" in err
    assert "unknown action 'reboot'" in err
    assert "targets.yaml: services.gateway.kubernetes" in err
    assert "4 problem(s)" in err


def test_rules_test_exit_codes_and_output(tmp_path: Path) -> None:
    match = RULES / "golden" / "bad_deploy" / "rollback_needs_approval.json"
    code, out, _ = run("rules", "test", str(RULES / "bad_deploy.yaml"), "--event", str(match))
    assert code == 0
    assert "matched: bad-deploy/rollback-bad-model" in out
    assert "action: rollback_model(version=None) on inference-a" in out
    assert (
        "approval: REQUIRED (risk high); ttl 900s, on expiry deny; approvers: ml-oncall, platform-lead" in out
    )
    assert "safeguards: cooldown 7200s per target" in out

    event = json.loads(match.read_text())["event"]
    (tmp_path / "event.json").write_text(json.dumps(event))
    code, out, _ = run("rules", "test", str(RULES), "--event", str(tmp_path / "event.json"))
    assert code == 1 and "persistence not reached yet" in out  # a bare event has no history

    (tmp_path / "facts.json").write_text(json.dumps([{"service": "vector-db", "anomalous": True}]))
    code, out, _ = run(
        "rules", "test", str(RULES), "--event", str(match), "--facts", str(tmp_path / "facts.json")
    )
    assert code == 0  # an anomalous upstream no longer gates: the diagnosis' role does, over a window

    victim = RULES / "golden" / "bad_deploy" / "victim_of_feature_store_outage.json"
    code, out, _ = run("rules", "test", str(RULES), "--event", str(victim))
    assert code == 1 and "role victim is not root (root cause: feature-store)" in out
    unsure = RULES / "golden" / "bad_deploy" / "unsure_diagnosis_waits.json"
    code, out, _ = run("rules", "test", str(RULES), "--event", str(unsure))
    assert code == 1 and "diagnosis bad_deploy (0.45) is not bad_deploy with probability >= 0.6" in out

    bad_facts = [{"service": "vector-db", "anomalus": True}, {"service": "gateway", "anomalous": "maybe"}]
    (tmp_path / "bad_facts.json").write_text(json.dumps(bad_facts))
    code, _, err = run(
        "rules", "test", str(RULES), "--event", str(match), "--facts", str(tmp_path / "bad_facts.json")
    )
    assert code == 2  # each fact's problem with its path and the one wording, not pydantic's text
    assert "health[0]: unknown key 'anomalus' (did you mean 'anomalous'?)" in err
    assert "health[1].anomalous" in err and "pydantic" not in err

    (tmp_path / "bad_event.json").write_text(json.dumps({"service": "x", "score": "high"}))
    code, _, err = run("rules", "test", str(RULES), "--event", str(tmp_path / "bad_event.json"))
    assert code == 2 and "score" in err and "detector" in err


def test_rules_test_json(tmp_path: Path) -> None:
    match = RULES / "golden" / "memory_leak" / "restart_when_persistent.json"
    code, out, _ = run("rules", "test", str(RULES), "--event", str(match), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["decision"]["action"] == "restart" and len(doc["decision"]["evidence"]) == 1


def test_validate_checks_target_services(tmp_path: Path) -> None:
    for name in ("topology.yaml", "memory_leak.yaml"):
        shutil.copy(RULES / name, tmp_path / name)
    (tmp_path / "targets.yaml").write_text("services:\n  vectordb: {backend: simulator}\n")
    code, _, err = run("rules", "validate", str(tmp_path))
    assert code == 2
    assert (
        f"{tmp_path / 'targets.yaml'}: services.vectordb: unknown service (did you mean 'vector-db'?)" in err
    )
