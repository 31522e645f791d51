"""Chaos experiments end to end, fast: simulated platform + the real engine on a simulated clock.

Each run starts the platform's HTTP server and the engine's (FastAPI) in this process, pushes four
hours of healthy warm-up, injects the fault through the admin API and lets platform time run at
720x (a day in two minutes). Assertions are on what the engine did, read from its journal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.chaos.api import EXPERIMENTS_DIR, run_experiment
from engine.chaos.report import write_report
from engine.chaos.results import RunResult
from engine.runtime.journal import Journal

# The experiments' own speed. Faster is possible, but the engine's latency (wall milliseconds)
# then grows in platform time and eats into the policies' verification deadlines.
SPEED = 720.0


@pytest.fixture(scope="module")
def pipeline() -> Any:
    from engine.chaos.api import default_detector

    return default_detector()


def run(name: str, tmp_path: Path, pipeline: Any, tracking_uri: str | None = None) -> RunResult:
    return run_experiment(
        EXPERIMENTS_DIR / f"{name}.yaml",
        tmp_path / name,
        detector=pipeline,
        speed=SPEED,
        tracking_uri=tracking_uri,
    )


@pytest.mark.alone
def test_dependency_outage_is_healed_at_the_root_and_the_victims_are_left_alone(
    tmp_path: Path, pipeline: Any
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run("dependency_outage", tmp_path, pipeline, tracking_uri=uri)
    assert result.passed, result.reasons
    (fault,) = result.faults
    assert fault.service == "vector-db" and fault.ttd_s is not None and 0 < fault.ttd_s < 600
    assert fault.ttr_s is not None and fault.ttd_s < fault.ttr_s < 1200
    assert [(a["action"], a["target"], a["verification"]) for a in fault.actions] == [
        ("restart", "vector-db", "verified")
    ]
    assert result.unexpected == []
    with Journal(tmp_path / "dependency_outage" / "engine.sqlite", read_only=True) as journal:
        executions = journal.recent("executions", limit=100)
        anomalies = journal.recent("events", status="anomaly", limit=10_000)
    assert {e["target"] for e in executions if e["kind"] == "action"} == {"vector-db"}
    victims = {e["service"] for e in anomalies} & {"inference-a", "inference-b", "gateway"}
    assert victims, "the victims were anomalous too: leaving them alone was a decision"
    record = json.loads((tmp_path / "dependency_outage" / "journal.json").read_text())
    assert record["result"]["verdict"] == "passed"
    restarts = [a for a in record["admin"] if a["op"] == "restart"]
    assert [a["service"] for a in restarts] == ["vector-db"] and restarts[0]["key"].endswith(":action")
    import mlflow

    (logged,) = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("chaos").experiment_id]
    )
    assert logged.data.tags["verdict"] == "passed" and logged.data.metrics["passed"] == 1.0
    assert logged.data.metrics["ttd_s_outage"] == pytest.approx(fault.ttd_s)
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(logged.info.run_id)}
    assert {"report.html", "summary.txt", "journal.json"} <= artifacts


@pytest.mark.slow
@pytest.mark.alone
def test_a_bad_deploy_rollback_waits_for_approval_given_over_http(tmp_path: Path, pipeline: Any) -> None:
    result = run("bad_deploy", tmp_path, pipeline)
    assert result.passed, result.reasons
    (approval,) = [a for a in result.approvals if a["status"] == "approved"]
    assert approval["action"] == "rollback_model" and approval["target"] == "inference-a"
    assert approval["approver"] == "ml-oncall"  # recorded by the engine from the HTTP request
    (fault,) = result.faults
    (action,) = fault.actions
    assert action["executed"] >= approval["settled"] >= approval["asked"] + 120 - 1  # 'after: 2m'
    assert action["verification"] == "verified"
    page, summary = write_report([result], tmp_path / "report")
    assert "rollback_model" in summary.read_text() and 'id="faults-table"' in page.read_text()


@pytest.mark.slow
@pytest.mark.alone
def test_an_unanswered_approval_expires_and_nothing_is_rolled_back(tmp_path: Path, pipeline: Any) -> None:
    result = run("bad_deploy_expired", tmp_path, pipeline)
    assert result.passed, result.reasons
    assert result.approvals and result.approvals[0]["status"] == "expired"
    actions = [a for f in result.faults for a in f.actions] + result.unexpected
    assert all(a["action"] != "rollback_model" for a in actions)
    assert result.after_ok  # after the experiment's own rollback (an operator's fix)
