"""The journal as evidence: outcomes and operator labels exported into the DuckDB store, and
notebook 04 reading them (a real SQLite journal, a real DuckDB file, an engine over HTTP, papermill)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
from test_runtime_support import TOKEN, AdminServer, push_anomaly, serving, wait_for, write_rules

from engine.errors import InputError, RuntimeEngineError
from engine.home import Home
from engine.runtime.client import EngineClient
from engine.runtime.journal import ApprovalStatus, DecisionStatus, Journal
from engine.runtime.outcomes import export_to_store, load_outcomes, policy_effectiveness
from engine.telemetry.store import TelemetryStore
from engine.tracking.notebooks import run_notebook

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "04_outcomes.ipynb"


def _decide(j: Journal, event_ts: float, service: str, rule: str, status: str, **extra: object) -> str:
    event_id = j.record_event(
        {"service": service, "score": 0.97, "threshold": 0.9, "detector": "IForest", "detector_version": "3",
         "window_start": event_ts - 60, "window_end": event_ts},
        ts=event_ts,
    )  # fmt: skip
    decision = {"event_id": event_id, "service": service, "policy": "platform", "rule": rule,
                "action": "restart", "risk": "low", "detector": "IForest", "detector_version": "3",
                "bundle_version": "b1", "window_start": event_ts - 60, "window_end": event_ts,
                **extra}  # fmt: skip
    return j.record_decision(decision, status=status)


def _run_and_verify(j: Journal, decision_id: str, verdict: str) -> None:
    decision = j.decision(decision_id)
    assert decision is not None
    execution = j.start_execution(
        decision, kind="action", action="restart", params={}, idempotency_key=decision_id
    )
    assert execution is not None
    j.finish_execution(execution, "succeeded")
    (verification,) = j.start_verifications([(decision_id, execution, time.time(), time.time() + 60)])
    j.finish_verifications([(verification, verdict, {"score": 0.1})])
    j.set_decision_status(decision_id, verdict)


def _settle(j: Journal, decision_id: str, status: str) -> None:
    approval = j.create_approval(decision_id, ttl_s=60)
    assert j.settle_approval(approval, status, approver="bob", reason="no")
    j.set_decision_status(decision_id, DecisionStatus.DENIED)


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    path = tmp_path / "journals" / "engine.sqlite"
    now = time.time()
    with Journal(path) as j:
        healed = _decide(j, now - 300, "inference-a", "restart-inference", DecisionStatus.EXECUTING)
        _run_and_verify(j, healed, DecisionStatus.VERIFIED)
        failed = _decide(j, now - 200, "inference-a", "restart-inference", DecisionStatus.EXECUTING)
        _run_and_verify(j, failed, DecisionStatus.VERIFICATION_FAILED)
        _settle(j, _decide(j, now - 100, "vector-db", "rollback", DecisionStatus.AWAITING_APPROVAL),
                ApprovalStatus.REJECTED)  # fmt: skip
        _settle(j, _decide(j, now - 90, "vector-db", "rollback", DecisionStatus.AWAITING_APPROVAL),
                ApprovalStatus.EXPIRED)  # fmt: skip
        _decide(j, now - 80, "gateway", "restart-gateway", DecisionStatus.BLOCKED)
        _decide(j, now - 70, "gateway", "restart-gateway", DecisionStatus.AWAITING_APPROVAL, id="dec-open")
    return path


def test_every_decision_becomes_one_outcome_in_the_store(journal_path: Path, tmp_path: Path) -> None:
    store_path = tmp_path / "telemetry.duckdb"
    assert export_to_store(journal_path, store_path) == (6, 0)
    with TelemetryStore(store_path) as store:
        outcomes, labels = store.outcomes()
    assert labels.height == 0
    assert outcomes["outcome"].to_list() == ["healed", "not_healed", "rejected", "expired", "blocked", "open"]
    healed = outcomes.row(0, named=True)
    assert 300 <= healed["time_to_recover_s"] < 330  # from the anomaly to the verified recovery
    assert healed["detector_version"] == "3" and healed["bundle_version"] == "b1"
    assert healed["verification"] == "verified" and healed["window_end"] > healed["window_start"]
    assert outcomes["time_to_recover_s"].null_count() == 5  # only a verified action recovered
    assert outcomes.row(2, named=True)["approver"] == "bob"

    table = policy_effectiveness(outcomes).rows_by_key("rule", named=True, unique=True)
    assert table["restart-inference"]["actions"] == 2 and table["restart-inference"]["verified_rate"] == 0.5
    assert table["rollback"]["rejected"] == 1 and table["rollback"]["expired"] == 1
    assert table["rollback"]["actions"] == 0 and table["rollback"]["verified_rate"] is None
    assert table["restart-gateway"]["blocked"] == 1 and table["restart-gateway"]["decisions"] == 2


def test_exporting_again_updates_settled_decisions_without_duplicates(
    journal_path: Path, tmp_path: Path
) -> None:
    store_path = tmp_path / "telemetry.duckdb"
    export_to_store(journal_path, store_path)
    with Journal(journal_path) as j:
        _run_and_verify(j, "dec-open", DecisionStatus.VERIFIED)
    assert export_to_store(journal_path, store_path) == (6, 0)
    with TelemetryStore(store_path) as store:
        outcomes, _ = store.outcomes()
    assert outcomes.height == 6
    assert outcomes.filter(pl.col("decision_id") == "dec-open")["outcome"].to_list() == ["healed"]


def test_an_outcome_joins_the_telemetry_of_its_window(journal_path: Path, tmp_path: Path) -> None:
    store_path = tmp_path / "telemetry.duckdb"
    export_to_store(journal_path, store_path)
    with TelemetryStore(store_path) as store:
        healed = store.outcomes()[0].row(0, named=True)
        inside, outside = (
            healed["window_end"] - timedelta(seconds=30),
            healed["window_end"] + timedelta(minutes=5),
        )
        points = pl.DataFrame(
            {"ts": [inside, outside, inside], "service": ["inference-a", "inference-a", "gateway"],
             "metric": ["latency_p99_ms"] * 3, "value": [900.0, 120.0, 80.0], "labels": [None, None, None]}
        )  # fmt: skip
        store.insert_points(points, source="test")
        joined = store.query(
            "SELECT decision_id, service, value FROM outcome_telemetry WHERE decision_id = ?",
            [healed["decision_id"]],
        )
    assert joined.rows() == [(healed["decision_id"], "inference-a", 900.0)]


def test_a_missing_journal_or_an_unexported_store_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no journal here") as missing:
        export_to_store(tmp_path / "nope.sqlite", tmp_path / "t.duckdb")
    assert "--journal" in (missing.value.hint or "")
    home = Home(tmp_path / "home").ensure()
    with TelemetryStore(home.telemetry_db) as store:
        store.con.execute("DROP TABLE outcomes")  # a store from before the export existed
    with pytest.raises(InputError, match="no outcomes yet") as empty:
        load_outcomes(home)
    assert "selfheal journal export --to-store" in (empty.value.hint or "")


def test_an_operator_labels_a_false_alarm_through_the_engine(tmp_path: Path) -> None:
    journals = tmp_path / "journals"
    with AdminServer() as admin, serving(write_rules(tmp_path / "rules", admin.url), journals) as running:
        push_anomaly(running.url, vector_db=True)
        with Journal(journals / "engine.sqlite", read_only=True) as j:
            event = wait_for(lambda: j.recent("events", service="vector-db", status="anomaly"))[0]
        client = EngineClient(running.url, TOKEN)
        assert client.label(event["id"], "false_alarm", "planned load test")["actor"] == "token"
        with pytest.raises(RuntimeEngineError, match=r"no event 'evt-0000000000000000'.*HTTP 404"):
            client.label("evt-0000000000000000", "false_alarm", None)
        bad = httpx.post(
            f"{running.url}/v1/events/{event['id']}/label",
            json={"label": "maybe"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert bad.status_code == 422 and "false_alarm" in bad.text
        assert (
            httpx.post(
                f"{running.url}/v1/events/{event['id']}/label", json={"label": "false_alarm"}
            ).status_code
            == 401
        )
    export_to_store(journals / "engine.sqlite", tmp_path / "t.duckdb")
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        (label,) = store.outcomes()[1].rows(named=True)
    assert label["event_id"] == event["id"] and label["label"] == "false_alarm"
    assert label["actor"] == "token" and label["reason"] == "planned load test"
    assert label["detector_version"] == event["detector_version"] and label["service"] == "vector-db"


def test_the_outcomes_notebook_runs_on_an_exported_journal(journal_path: Path, tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    export_to_store(journal_path, home.telemetry_db)
    with Journal(journal_path) as j:  # one labeled alarm of detector version 3
        j.set_control("label:" + j.recent("events", service="gateway")[0]["id"], "false_alarm", actor="bob")
    export_to_store(journal_path, home.telemetry_db)
    everything = run_notebook(NOTEBOOK, {"home": str(home.root)}, home=home, log_to_mlflow=False)
    assert everything.ok, everything.output
    text = Path(everything.output).read_text()
    assert "6 decisions, 1 labeled alarms" in text and "restart-gateway" in text
    assert "image/png" in text  # the effectiveness plot
    one = run_notebook(
        NOTEBOOK, {"home": str(home.root), "policies": ["nobody"]}, home=home, log_to_mlflow=False
    )
    assert one.ok and "0 decisions, 1 labeled alarms" in Path(one.output).read_text()


def test_timestamps_are_stored_as_utc(journal_path: Path, tmp_path: Path) -> None:
    export_to_store(journal_path, tmp_path / "t.duckdb")
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        decided = store.outcomes()[0]["decided"].max()
    assert abs(decided - datetime.now(UTC).replace(tzinfo=None)) < timedelta(minutes=5)
