"""The engine end to end in one process: HTTP push → features → scores → durable-rules → safeguards →
http actions on a local admin server → verification, all recorded in the journal."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_runtime_support import (
    T0,
    TOKEN,
    AdminServer,
    fit_pipeline,
    ndjson,
    service_points,
    wait_for,
    write_rules,
)

from engine.runtime.components import assemble
from engine.runtime.config import load_settings
from engine.runtime.journal import DecisionStatus, Journal
from engine.runtime.safeguards import MaintenanceWindow
from engine.runtime.server import RunningEngine, build_engine, serve_in_thread

ALICE = "alice-token-5678"


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return fit_pipeline()


class Harness:
    def __init__(self, running: RunningEngine, admin: AdminServer, journals: Path) -> None:
        self.running = running
        self.engine = running.engine
        self.admin = admin
        self.url = running.url
        self.journal_path: Path | str = running.engine.settings.journal_path(journals)
        self.t = T0

    def push(self, seconds: int, **anomalous: bool) -> httpx.Response:
        body = ndjson(list(service_points(self.t, seconds, **anomalous)))
        self.t += seconds
        r = httpx.post(
            f"{self.url}/v1/telemetry", content=body, headers={"content-type": "application/x-ndjson"}
        )
        assert r.status_code == 202, r.text
        return r

    def decisions(self, **filters: Any) -> list[dict[str, Any]]:
        with Journal(self.journal_path, read_only=True) as j:
            return j.recent("decisions", **filters)

    def rows(self, kind: str, **filters: Any) -> list[dict[str, Any]]:
        with Journal(self.journal_path, read_only=True) as j:
            return j.recent(kind, **filters)

    def decision_with(self, status: str, service: str) -> dict[str, Any] | None:
        rows = self.decisions(service=service, status=status)
        return rows[0] if rows else None


@pytest.fixture
def harness(tmp_path: Path, pipeline: Any) -> Iterator[Harness]:
    with running_harness(tmp_path, pipeline) as running:
        yield running


@contextmanager
def running_harness(tmp_path: Path, pipeline: Any, **overrides: Any) -> Iterator[Harness]:
    """The engine in a thread on a local admin server; ``overrides`` replace the test's settings."""
    with AdminServer() as admin:
        rules = write_rules(tmp_path / "rules", admin.url)
        components = assemble(pipeline, rules, bundle_version="b-test", detector_version="1")
        settings = load_settings(
            overrides={
                "port": 0,
                "token": TOKEN,
                "approver_tokens": {"alice": ALICE},
                "tick_s": 0.01,
                "verify_interval_s": 0.05,
                **overrides,
            },
            environ={},
        )
        engine = build_engine(components, settings, tmp_path / "journals")
        running = serve_in_thread(engine)
        try:
            yield Harness(running, admin, tmp_path / "journals")
        finally:
            running.stop()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_pushed_points_lead_to_a_verified_action_in_the_journal(harness: Harness) -> None:
    harness.push(5)
    harness.push(4, inference_a=True)
    call = wait_for(lambda: harness.admin.calls("/admin/restart"))[0]
    decision = wait_for(lambda: harness.decision_with(DecisionStatus.VERIFYING, "inference-a"))
    assert call["key"] == f"{decision['id']}:action"
    harness.push(4)  # back to normal: the steady state returns
    verified = wait_for(lambda: harness.decision_with(DecisionStatus.VERIFIED, "inference-a"))
    assert verified["id"] == decision["id"]
    assert verified["bundle_version"] == "b-test" and verified["detector"] == "IForest"
    assert verified["detector_version"] == "1" and verified["policy_version"].startswith("7+")
    assert verified["rule"] == "platform/restart-inference" or "restart-inference" in verified["rule"]
    assert verified["window_start"] < verified["window_end"]
    (execution,) = harness.rows("executions", service="inference-a")
    assert execution["status"] == "succeeded" and execution["idempotency_key"] == call["key"]
    (verification,) = harness.rows("verifications", service="inference-a")
    assert verification["status"] == "verified" and verification["detail"]["score"] < 0.95
    events = harness.rows("events", service="inference-a", status="anomaly")
    assert events and events[0]["bundle_version"] == "b-test" and events[0]["score"] > events[0]["threshold"]
    assert set(events[-1]["contributing"]) & {"latency_p99_ms", "memory_util"}
    assert {f.split("__")[0] for f, _ in events[-1]["payload"]["features"]} == set(events[-1]["contributing"])
    assert len(harness.admin.calls("/admin/restart")) == 1  # persistent anomaly, one action
    api = httpx.get(
        f"{harness.url}/v1/decisions", params={"service": "inference-a", "status": "verified"}
    ).json()
    assert [d["id"] for d in api] == [decision["id"]]
    metrics = httpx.get(f"{harness.url}/metrics").text
    for name in (
        "selfheal_points_in_total",
        "selfheal_scoring_latency_seconds_bucket",
        "selfheal_anomalies_total",
        'selfheal_verifications_total{action="restart",outcome="verified",policy="platform"} 1.0',
        "selfheal_approvals_pending 0.0",
        "selfheal_queue_depth",
    ):
        assert name in metrics, name


def test_high_risk_action_waits_for_an_authenticated_approver(harness: Harness) -> None:
    harness.push(3)
    harness.push(2, vector_db=True)
    pending = wait_for(lambda: httpx.get(f"{harness.url}/v1/approvals").json())
    assert len(pending) == 1 and pending[0]["action"] == "rollback_model"
    approval_id = pending[0]["id"]
    assert harness.admin.calls() == []
    url = f"{harness.url}/v1/approvals/{approval_id}/approve"
    assert httpx.post(url, json={"reason": "x"}).status_code == 401
    assert httpx.post(url, json={"reason": "x"}, headers=_auth("wrong-token-000")).status_code == 401
    shared = httpx.post(url, json={"reason": "x"}, headers=_auth(TOKEN))
    assert shared.status_code == 403
    ok = httpx.post(url, json={"reason": "canary is bad"}, headers=_auth(ALICE))
    assert ok.status_code == 200, ok.text
    assert ok.json()["approver"] == "alice"
    call = wait_for(lambda: harness.admin.calls("/admin/rollback_model"))[0]
    (approval,) = harness.rows("approvals")
    assert (approval["status"], approval["approver"], approval["reason"]) == (
        "approved",
        "alice",
        "canary is bad",
    )
    assert call["key"] == f"{approval['decision_id']}:action"
    assert httpx.post(url, json={}, headers=_auth(ALICE)).status_code == 409  # settled once


def test_the_recorded_actor_is_the_token_s_identity_never_a_name_from_the_body(
    harness: Harness,
) -> None:
    harness.push(3)
    harness.push(2, vector_db=True)
    approval_id = wait_for(lambda: httpx.get(f"{harness.url}/v1/approvals").json())[0]["id"]
    url = f"{harness.url}/v1/approvals/{approval_id}/approve"
    for token in (TOKEN, ALICE):  # neither the shared token nor a named one may claim a name
        claimed = httpx.post(url, json={"reason": "x", "approver": "alice"}, headers=_auth(token))
        assert claimed.status_code == 422 and "approver" in claimed.text
    shared = httpx.post(url, json={"reason": "x"}, headers=_auth(TOKEN))
    assert shared.status_code == 403 and "approver_tokens" in shared.text
    assert harness.rows("approvals")[0]["status"] == "pending"
    for token, actor in ((TOKEN, "token"), (ALICE, "alice")):
        claim = httpx.post(f"{harness.url}/v1/pause", json={"approver": "bob"}, headers=_auth(token))
        assert claim.status_code == 422
        assert httpx.post(f"{harness.url}/v1/pause", json={}, headers=_auth(token)).status_code == 200
        with Journal(harness.journal_path, read_only=True) as j:
            control = j.control("paused")
        assert control is not None and control["actor"] == actor
    ok = httpx.post(url, json={"reason": "go"}, headers=_auth(ALICE))
    assert ok.status_code == 200 and ok.json()["approver"] == "alice"


def test_rejection_and_expiry_deny(harness: Harness) -> None:
    harness.push(3)
    harness.push(2, vector_db=True)
    first = wait_for(lambda: httpx.get(f"{harness.url}/v1/approvals").json())[0]
    url = f"{harness.url}/v1/approvals/{first['id']}/reject"
    assert httpx.post(url, json={}, headers=_auth(ALICE)).status_code == 422  # a reason is required
    assert httpx.post(url, json={"reason": "known issue"}, headers=_auth(ALICE)).status_code == 200
    wait_for(lambda: harness.decision_with(DecisionStatus.DENIED, "vector-db"))
    harness.push(2, vector_db=True)
    second = wait_for(
        lambda: [a for a in httpx.get(f"{harness.url}/v1/approvals").json() if a["id"] != first["id"]]
    )[0]
    harness.engine.writer.supervisor.step(now=second["expires_ts"] + 1)  # a pass after the TTL
    approval = next(a for a in harness.rows("approvals") if a["id"] == second["id"])
    assert approval["status"] == "expired"
    assert (
        httpx.post(
            f"{harness.url}/v1/approvals/{second['id']}/approve", json={}, headers=_auth(ALICE)
        ).status_code
        == 409
    )
    assert [d["status"] for d in harness.decisions(service="vector-db")] == ["denied", "denied"]
    assert harness.admin.calls() == []


def test_kill_switch_stops_actions_but_keeps_detecting_and_journaling(harness: Harness) -> None:
    assert httpx.post(f"{harness.url}/v1/pause", json={"reason": "drill"}).status_code == 401
    assert httpx.post(f"{harness.url}/v1/pause", json={"reason": "drill"}, headers=_auth(TOKEN)).json() == {
        "paused": True
    }
    harness.push(3)
    harness.push(4, inference_a=True)
    blocked = wait_for(lambda: harness.decision_with(DecisionStatus.BLOCKED, "inference-a"))
    assert blocked["reason"].startswith("kill_switch")
    assert harness.rows("events", service="inference-a", status="anomaly")
    assert harness.admin.calls() == []
    assert httpx.post(f"{harness.url}/v1/resume", headers=_auth(TOKEN)).json() == {"paused": False}
    harness.push(4, inference_a=True)
    wait_for(lambda: harness.admin.calls("/admin/restart"))
    with Journal(harness.journal_path, read_only=True) as j:
        control = j.control("paused")
    assert control is not None and control["value"] is False and control["actor"] == "token"


def test_failed_verification_escalates_and_rolls_back(harness: Harness) -> None:
    harness.push(3)
    harness.push(3, feature_store=True)
    wait_for(lambda: harness.admin.calls("/admin/scale"))
    rolled = wait_for(lambda: harness.decision_with(DecisionStatus.ROLLED_BACK, "feature-store"), timeout=15)
    scale_calls = wait_for(lambda: (c := harness.admin.calls("/admin/scale")) and len(c) == 2 and c)
    assert scale_calls[0]["body"] == {"delta": 1}
    assert scale_calls[1]["body"] == {"replicas": 2}  # the inverse, from what the target reported
    assert scale_calls[1]["key"] == f"{rolled['id']}:rollback"
    hook = wait_for(lambda: harness.admin.calls("/hook"))[0]
    assert hook["body"]["decision_id"] == rolled["id"] and "verification failed" in hook["body"]["reason"]
    (verification,) = harness.rows("verifications", service="feature-store")
    assert verification["status"] == "failed"
    kinds = sorted(e["kind"] for e in harness.rows("executions", service="feature-store"))
    assert kinds == ["action", "escalation", "rollback"]


@pytest.mark.parametrize("guard", ["kill_switch", "maintenance"])
def test_rollback_after_failed_verification_obeys_kill_switch_and_maintenance(
    harness: Harness, guard: str
) -> None:
    harness.push(3)
    harness.push(3, feature_store=True)
    wait_for(lambda: harness.admin.calls("/admin/scale"))
    if guard == "kill_switch":
        harness.engine.writer.set_paused(True, actor="test", reason="drill")
    else:
        harness.engine.writer.decider.maintenance = [MaintenanceWindow(("feature-*",), 0.0, 4e9, "upgrade")]
    blocked = wait_for(lambda: harness.decision_with(DecisionStatus.BLOCKED, "feature-store"), timeout=15)
    assert blocked["reason"].startswith(f"verification failed; rollback blocked by {guard}")
    hook = wait_for(lambda: harness.admin.calls("/hook"))
    assert len(hook) == 1 and "rollback blocked" in hook[0]["body"]["reason"]
    assert len(harness.admin.calls("/admin/scale")) == 1  # no rollback call
    kinds = sorted(e["kind"] for e in harness.rows("executions", service="feature-store"))
    assert kinds == ["action", "escalation"]


def test_malformed_points_are_refused_by_field_and_dead_lettered(harness: Harness) -> None:
    good = {"ts": T0, "service": "gateway", "metric": "latency_p99_ms", "value": 1.0}
    lines = [
        json.dumps(good),
        json.dumps({**good, "value": "abc"}),
        json.dumps({k: v for k, v in good.items() if k != "service"}),
        "{not json",
        json.dumps({**good, "ts": "yesterday"}),
        json.dumps({**good, "ts": T0 + 1}),
    ]
    r = httpx.post(
        f"{harness.url}/v1/telemetry",
        content="\n".join(lines),
        headers={"content-type": "application/x-ndjson"},
    )
    assert r.status_code == 400
    body = r.json()
    assert body["accepted"] == 2 and body["rejected"] == 4
    assert "field 'value'" in body["detail"]
    assert [e["field"] for e in body["errors"]] == ["value", "service", "line", "ts"]
    dead = harness.engine.dead_letter.path.read_text().splitlines()
    assert [json.loads(x)["field"] for x in dead] == ["value", "service", "line", "ts"]
    metrics = httpx.get(f"{harness.url}/metrics").text
    assert 'selfheal_points_rejected_total{field="value",source="http"} 1.0' in metrics
    assert 'selfheal_points_in_total{source="http"} 2.0' in metrics
    assert httpx.get(f"{harness.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{harness.url}/readyz").status_code == 200


def test_json_array_and_points_object_bodies(harness: Harness) -> None:
    pts = [{"ts": T0, "service": "gateway", "metric": "memory_util", "value": 0.5}]
    assert httpx.post(f"{harness.url}/v1/telemetry", json=pts).json() == {"accepted": 1}
    assert httpx.post(f"{harness.url}/v1/telemetry", json={"points": pts * 3}).json() == {"accepted": 3}
    bad = httpx.post(
        f"{harness.url}/v1/telemetry", json={"ts": T0, "service": "g", "metric": "m", "value": None}
    )
    assert bad.status_code == 400 and "'value'" in bad.json()["detail"]


def test_health_facts_gate_the_victim_and_act_on_the_root(harness: Harness) -> None:
    """gateway depends on vector-db: both anomalous in one tick, only the root gets a decision."""
    harness.push(3)
    harness.push(4, vector_db=True, gateway=True)
    wait_for(lambda: httpx.get(f"{harness.url}/v1/approvals").json())  # vector-db's rollback waits
    harness.push(2)
    wait_for(lambda: harness.rows("events", service="gateway", status="health"))
    assert harness.decisions(service="gateway") == []
    assert harness.rows("events", service="gateway", status="anomaly")  # detected and journaled
    assert harness.admin.calls("/admin/restart") == []


def test_a_recovery_in_the_same_tick_leaves_the_root_healthy_and_its_dependents_ungated(
    harness: Harness,
) -> None:
    """vector-db anomalous then normal inside one tick: its last row wins, so gateway (which depends
    on it) is not gated later. The host marks every posted service anomalous; the engine must
    restore the tick's last word after posting, or gating silences gateway for good."""
    harness.push(3)
    burst = list(service_points(harness.t, 1, vector_db=True)) + list(service_points(harness.t + 1, 2))
    harness.t += 3
    r = httpx.post(f"{harness.url}/v1/telemetry", content=ndjson(burst))  # one request, one tick
    assert r.status_code == 202, r.text

    def vector_db_health() -> list[bool] | None:
        rows = harness.rows("events", service="vector-db", status="health")
        return [bool(e["payload"]["anomalous"]) for e in reversed(rows)] or None

    assert wait_for(vector_db_health) == [True, False]  # both rows in one tick, the recovery last
    assert harness.rows("events", service="vector-db", status="anomaly")
    harness.push(4, gateway=True)
    decisions = wait_for(lambda: harness.decisions(service="gateway"))
    assert [d["action"] for d in decisions] == ["restart"]
    assert not harness.engine.components.policies.health()["vector-db"].anomalous


@pytest.mark.slow
def test_recovery_fails_a_decision_whose_actions_all_failed(tmp_path: Path, pipeline: Any) -> None:
    """What a crash between the failed execution and its decision's status left: 'executing' for ever,
    blocking every later decision of its rule, target and action as a duplicate."""
    settings = load_settings(overrides={"port": 0, "token": TOKEN}, environ={})
    path = settings.journal_path(tmp_path / "journals")
    record = {
        "id": "dec-1",
        "event_id": "evt-1",
        "service": "gateway",
        "target": "gateway",
        "action": "restart",
        "params": {},
        "policy": "platform",
        "rule": "restart-inference",
    }
    with Journal(path) as j:
        j.record_decision(record, status=DecisionStatus.EXECUTING)
        started = j.start_execution(
            record, kind="action", action="restart", params={}, idempotency_key="dec-1:action"
        )
        assert started is not None
        j.finish_execution(started, "failed", error="HTTP 500")
        j.settle_execution(started)
    with AdminServer() as admin:
        components = assemble(pipeline, write_rules(tmp_path / "rules", admin.url), bundle_version="b")
        engine = build_engine(components, settings, tmp_path / "journals").start()
        engine.stop(drain=False)
    with Journal(path, read_only=True) as j:
        row = j.decision("dec-1")
        assert row is not None and (row["status"], row["reason"]) == ("failed", "HTTP 500")
        assert j.active_decision("gateway", "restart-inference", "restart") is None


def test_stop_keeps_the_journal_open_while_the_decider_is_still_writing(
    tmp_path: Path, pipeline: Any, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    settings = load_settings(overrides={"port": 0, "token": TOKEN, "drain_timeout_s": 0.3}, environ={})
    with AdminServer() as admin:
        components = assemble(pipeline, write_rules(tmp_path / "rules", admin.url), bundle_version="b")
        engine = build_engine(components, settings, tmp_path / "journals").start()
        engine.listeners.append(lambda kind, data: kind == "blocked" and release.wait(10))
        engine.writer.set_paused(True, actor="test")
        engine.ingest(list(_tuples(service_points(T0, 3))), [], source="test")
        engine.ingest(list(_tuples(service_points(T0 + 3, 4, inference_a=True))), [], source="test")
        wait_for(lambda: engine.journal.count("decisions", "blocked"))  # the decider now waits
        engine.stop(drain=False)
        assert "journal writer did not stop" in caplog.text
        assert engine.journal.count("decisions", "blocked") >= 1  # still open, still usable
        release.set()
        wait_for(lambda: not [t for t in threading.enumerate() if t.name == "selfheal-write"])
        engine.journal.close()


def _tuples(items: Any) -> Any:
    return ((p["ts"], p["service"], p["metric"], p["value"]) for p in items)


def test_sharded_scoring_workers_give_the_same_outcome(tmp_path: Path, pipeline: Any) -> None:
    """workers: 2 — features and scores in two processes, decisions and journal in the engine."""
    with AdminServer() as admin:
        rules = write_rules(tmp_path / "rules", admin.url)
        settings = load_settings(
            overrides={"port": 0, "token": TOKEN, "tick_s": 0.01, "verify_interval_s": 0.05, "workers": 2},
            environ={},
        )
        running = serve_in_thread(build_engine(assemble(pipeline, rules), settings, tmp_path / "journals"))
        harness = Harness(running, admin, tmp_path / "journals")
        try:
            harness.push(5)
            harness.push(4, inference_a=True)
            wait_for(lambda: admin.calls("/admin/restart"), timeout=30)
            harness.push(4)
            verified = wait_for(
                lambda: harness.decision_with(DecisionStatus.VERIFIED, "inference-a"), timeout=30
            )
            assert verified["detector"] == "IForest"
            assert running.engine.points_scored == 4 * 2 * 13  # services x metrics x seconds
            assert httpx.get(f"{running.url}/readyz").status_code == 200
            shards = running.engine.shards
            assert shards is not None and shards.alive == 2
        finally:
            running.stop()
        assert shards.alive == 0
