"""kill -9 a real engine process and start it again: nothing pending is lost, nothing is done twice.

The engine runs as ``selfheal run CONFIG`` in a subprocess, its components from
``tests/test_runtime_support.py:build_components`` (a real pipeline, policies compiled into
durable-rules, the ``http`` backend against a local admin server that records every call).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_runtime_support import (
    T0,
    AdminServer,
    EngineProcess,
    ndjson,
    service_points,
    wait_for,
    write_rules,
)

from engine.runtime.journal import DecisionStatus, Journal

pytestmark = pytest.mark.slow

SUPPORT = Path(__file__).with_name("test_runtime_support.py")
ALICE = "alice-token-5678"


class Engine(EngineProcess):
    """The engine on ``test_runtime_support``'s components and rules, with alice as an approver."""

    def __init__(self, tmp: Path, admin: AdminServer) -> None:
        super().__init__(
            tmp,
            # approvals wait out restarts on a busy machine (a 30 s TTL once expired mid-test at load 10)
            write_rules(tmp / "rules", admin.url, approval_ttl="10m"),
            config=f"approver_tokens: {{alice: {ALICE}}}\ntick_s: 0.01\nverify_interval_s: 0.05\n",
        )
        self.t = T0

    def push(self, seconds: int, **anomalous: bool) -> None:
        body = ndjson(list(service_points(self.t, seconds, **anomalous)))
        self.t += seconds
        assert httpx.post(f"{self.url}/v1/telemetry", content=body).status_code == 202

    def rows(self, kind: str, **filters: Any) -> list[dict[str, Any]]:
        with Journal(self.journal, read_only=True) as j:
            return j.recent(kind, **filters)

    def status_of(self, service: str, status: str) -> dict[str, Any] | None:
        rows = self.rows("decisions", service=service, status=status)
        return rows[0] if rows else None


@pytest.fixture
def admin() -> Iterator[AdminServer]:
    with AdminServer() as server:
        yield server


def test_kill_9_keeps_approvals_repeats_nothing_and_restores_policy_state(
    tmp_path: Path, admin: AdminServer
) -> None:
    engine = Engine(tmp_path, admin)
    engine.start()
    try:
        engine.push(3)
        engine.push(2, vector_db=True)
        engine.push(2)  # vector-db healthy again (so it does not gate the gateway)
        pending = wait_for(lambda: httpx.get(f"{engine.url}/v1/approvals").json())
        engine.push(3, inference_a=True)
        wait_for(lambda: engine.status_of("inference-a", DecisionStatus.VERIFYING))
        assert len(admin.calls("/admin/restart")) == 1
        engine.push(1, gateway=True)  # one anomalous tick of two needed (2 of 3)
        engine.push(1)
        wait_for(lambda: engine.rows("events", service="gateway", status="anomaly"))
        engine.kill9()

        engine.start()
        again = httpx.get(f"{engine.url}/v1/approvals").json()
        assert [a["id"] for a in again] == [pending[0]["id"]]  # still pending
        # Normal for inference-a (its verification resumes); one more anomalous gateway tick, which
        # completes "2 of the last 3" only if the durable-rules state came back.
        engine.push(2, gateway=True)
        verified = wait_for(lambda: engine.status_of("inference-a", DecisionStatus.VERIFIED))
        # inference-a's restart was executed before the crash and not again (the gateway's own
        # restart may already have landed: count by idempotency key, not by path)
        restarts = [c for c in admin.calls("/admin/restart") if c["key"] == f"{verified['id']}:action"]
        assert len(restarts) == 1
        wait_for(lambda: [c for c in admin.calls("/admin/restart") if c["key"] != f"{verified['id']}:action"])
        ok = httpx.post(
            f"{engine.url}/v1/approvals/{pending[0]['id']}/approve",
            json={"reason": "ok"},
            headers={"Authorization": f"Bearer {ALICE}"},
        )
        assert ok.status_code == 200
        wait_for(lambda: admin.calls("/admin/rollback_model"))
        assert engine.stop() == 0
        assert "signal 15: stopping intake, draining" in engine.log.read_text()
        assert len(admin.calls("/admin/rollback_model")) == 1
    finally:
        if engine.alive():
            engine.kill9()


def test_kill_9_mid_call_is_reported_not_repeated_and_an_approved_decision_runs_once(tmp_path: Path) -> None:
    with AdminServer(delay_s=4.0) as admin:
        engine = Engine(tmp_path, admin)
        engine.start()
        try:
            engine.push(3)
            engine.push(1, vector_db=True)
            engine.push(1)
            pending = wait_for(lambda: httpx.get(f"{engine.url}/v1/approvals").json())
            engine.push(3, inference_a=True)
            wait_for(lambda: admin.calls("/admin/restart"))  # the target is handling it (slowly)
            engine.kill9()  # ... when the engine dies
            with Journal(engine.journal) as j:  # the approval commits, then the engine dies again
                assert j.settle_approval(pending[0]["id"], "approved", approver="alice", reason="go")

            engine.start()
            unknown = wait_for(lambda: engine.status_of("inference-a", DecisionStatus.UNKNOWN))
            assert "not repeated" in unknown["reason"]
            executions = {e["kind"]: e for e in engine.rows("executions", service="inference-a")}
            assert executions["action"]["status"] == "unknown"
            # ... and a human is told (the target does not deduplicate: it cannot be asked again)
            hook = wait_for(lambda: admin.calls("/hook"), timeout=15)
            assert hook[0]["body"]["decision_id"] == unknown["id"] and "unknown" in hook[0]["body"]["reason"]
            wait_for(lambda: admin.calls("/admin/rollback_model"), timeout=15)
            time.sleep(0.5)
            assert len(admin.calls("/admin/restart")) == 1
            assert len(admin.calls("/admin/rollback_model")) == 1
            log = engine.log.read_text()
            assert "reported as unknown, not repeated" in log
        finally:
            if engine.alive():
                engine.kill9()


def test_kill_9_mid_call_to_a_deduplicating_target_asks_it_again_and_carries_on(tmp_path: Path) -> None:
    """Issue 18: an execution left 'started' by a crash is reconciled on restart. The target
    deduplicates by idempotency key (``dedup: true``), so the engine sends the same call again with
    the same key: the target applies it at most once and answers, and the decision goes on to its
    verification instead of staying unknown."""
    with AdminServer(delay_s=4.0) as admin:
        engine = Engine(tmp_path, admin)
        targets = Path(engine.env["SELFHEAL_TEST_RULES"]) / "targets.yaml"
        targets.write_text(targets.read_text().replace("timeout_s: 30", "timeout_s: 30, dedup: true"))
        engine.start()
        try:
            engine.push(3)
            engine.push(3, inference_a=True)
            wait_for(lambda: admin.calls("/admin/restart"))  # the target is handling it (slowly)
            engine.kill9()
            admin.delay_s = 0.0
            engine.start()
            again = wait_for(
                lambda: len(admin.calls("/admin/restart")) == 2 and admin.calls("/admin/restart")
            )
            assert again[0]["key"] == again[1]["key"]  # the same call, the same idempotency key
            decision = wait_for(lambda: engine.status_of("inference-a", DecisionStatus.VERIFYING))
            assert again[0]["key"] == f"{decision['id']}:action"
            (execution,) = engine.rows("executions", service="inference-a")
            assert execution["status"] == "succeeded"
            assert "asking the target again with the same idempotency key" in engine.log.read_text()
            engine.push(3)
            wait_for(lambda: engine.status_of("inference-a", DecisionStatus.VERIFIED))
        finally:
            if engine.alive():
                engine.kill9()
