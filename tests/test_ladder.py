"""The autonomy ladder: observe (journal what would run, act never), suggest (everything waits for an
approval), auto (risk decides); per policy and per service, changed at run time by an approver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from test_runtime_support import (
    T0,
    AdminServer,
    ndjson,
    push_anomaly,
    service_points,
    serving,
    wait_for,
    write_rules,
)

from engine.errors import ConfigError
from engine.policy import PolicyHost, load_policies
from engine.records import AnomalyEvent
from engine.runtime import safeguards
from engine.runtime.decider import Decider
from engine.runtime.events import TickEvents
from engine.runtime.journal import DecisionStatus, Journal
from engine.runtime.ladder import Modes, would_be
from engine.runtime.policies import ask

ALICE = "alice-token-5678"
TOKEN = "test-token-123"


@pytest.fixture
def host(tmp_path: Path) -> PolicyHost:
    return PolicyHost(load_policies(write_rules(tmp_path / "rules", "http://127.0.0.1:9")), tick_seconds=1.0)


def _event(service: str, tick: int, *, anomalous: bool = True) -> AnomalyEvent:
    return AnomalyEvent(
        service=service,
        detector="IForest",
        detector_version="1",
        bundle_version="b",
        score=0.99 if anomalous else 0.1,
        threshold=0.9,
        anomalous=anomalous,
        window_start=T0 + tick - 1,
        window_end=T0 + tick,
        ts=T0 + tick - 1,
        id=f"evt-{service}-{tick}",
    )


def _commit(decider: Decider, host: PolicyHost, *events: AnomalyEvent) -> Any:
    return decider.commit([ask(host, TickEvents(list(events), list(events), 0.0))])


def test_observe_journals_what_would_run_and_never_acts(host: PolicyHost, tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        decider = Decider(journal, limits=safeguards.GlobalLimits(), modes=Modes({"platform": "observe"}))
        done = _commit(decider, host, _event("feature-store", 1))
        assert done.executions == [] and [k for k, _ in done.notes] == ["observed"]
        (row,) = journal.recent("decisions")
        assert row["status"] == DecisionStatus.OBSERVED and row["action"] == "scale"
        assert row["reason"] == "observe mode: would run scale on feature-store"
        again = _commit(decider, host, _event("feature-store", 2))  # the same incident: not observed twice
        assert [k for k, _ in again.notes] == ["duplicate"] and journal.count("decisions") == 1
        assert journal.count("executions") == 0


def test_a_service_override_wins_over_its_policy_and_suggest_asks_for_everything(
    host: PolicyHost, tmp_path: Path
) -> None:
    modes = Modes(
        {"platform": "observe", "platform/feature-store": "suggest", "platform/inference-a": "auto"}
    )
    with Journal(tmp_path / "j.sqlite") as journal:
        decider = Decider(journal, limits=safeguards.GlobalLimits(), modes=modes)
        done = _commit(decider, host, _event("feature-store", 1), _event("vector-db", 1))
        statuses = {r["target"]: r["status"] for r in journal.recent("decisions")}
        assert statuses == {"feature-store": "awaiting_approval", "vector-db": "observed"}
        assert done.executions == [] and len(journal.pending_approvals()) == 1  # scale is low risk
        _commit(decider, host, _event("inference-a", 2))
        _commit(decider, host, _event("inference-a", 3))  # persistence: 2 of 3
        assert journal.recent("decisions", service="inference-a")[0]["status"] == "executing"


def test_modes_changed_at_run_time_are_journaled_and_survive_a_restart(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        modes = Modes({"platform": "observe"})
        modes.set(journal, "platform", None, "auto", actor="alice", reason="two weeks clean")
        modes.set(journal, "platform", "vector-db", "suggest", actor="bob", reason=None)
        assert modes.of("platform", "gateway") == "auto" and modes.of("platform", "vector-db") == "suggest"
        restarted = Modes({"platform": "observe"})
        restarted.load(journal)
        assert restarted.snapshot() == {"platform": "auto", "platform/vector-db": "suggest"}
        history = journal.recent("control")
        assert [(r["key"], r["value"], r["actor"]) for r in history] == [
            ("mode:platform/vector-db", "suggest", "bob"),
            ("mode:platform", "auto", "alice"),
        ]
    assert Modes().of("any", "thing") == "auto"


def test_would_be_actions_are_judged_by_whether_the_anomaly_cleared_by_itself(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        for service in ("a", "b"):
            journal.record_decision(
                {"id": f"d-{service}", "service": service, "policy": "p", "rule": "r", "action": "restart",
                 "spec": {"verify": {"deadline_s": 30}}},
                status=DecisionStatus.OBSERVED,
            )  # fmt: skip
        t = journal.decision("d-a")["ts"]  # type: ignore[index]
        healthy = {"service": "a", "anomalous": False, "id": "h1"}
        journal.record_event(healthy, kind="health", ts=t + 10)  # a: healthy 10 s later
        journal.record_event({**healthy, "service": "b", "id": "h2"}, kind="health", ts=t + 50)  # b: too late
        journal.record_event(
            {**healthy, "service": "b", "id": "h3", "anomalous": True}, kind="health", ts=t + 5
        )
        later, early = would_be(journal, "p", now=t + 100), would_be(journal, "p", now=t + 20)
        assert would_be(journal, "other", now=t + 100)["decisions"] == []
    by = {d["service"]: d for d in later["decisions"]}
    assert by["a"]["outcome"] == "cleared" and by["a"]["cleared_after_s"] == pytest.approx(10, abs=0.01)
    assert by["b"]["outcome"] == "persisted" and by["b"]["cleared_after_s"] is None
    assert later["counts"] == {"cleared": 1, "persisted": 1, "pending": 0}
    assert early["counts"] == {"cleared": 1, "persisted": 0, "pending": 1}


def test_an_approver_promotes_a_policy_through_the_api(tmp_path: Path) -> None:
    with AdminServer() as admin:
        rules = write_rules(tmp_path / "rules", admin.url)
        settings = {"approver_tokens": {"alice": ALICE}, "modes": {"platform": "observe"}}
        with serving(rules, tmp_path / "journals", **settings) as running:
            url = running.url
            push_anomaly(url, feature_store=True)
            observed = wait_for(lambda: httpx.get(f"{url}/v1/policies/platform/observed").json()["decisions"])
            assert observed[0]["action"] == "scale" and observed[0]["outcome"] in ("pending", "persisted")
            assert admin.calls() == []
            change = {"policy": "platform", "mode": "auto", "reason": "observed for two weeks"}
            assert httpx.post(f"{url}/v1/modes", json=change).status_code == 401
            shared = httpx.post(f"{url}/v1/modes", json=change, headers={"Authorization": f"Bearer {TOKEN}"})
            assert shared.status_code == 403
            alice = {"Authorization": f"Bearer {ALICE}"}
            unknown = httpx.post(f"{url}/v1/modes", json={**change, "policy": "platfrom"}, headers=alice)
            assert unknown.status_code == 404 and "platform" in unknown.json()["detail"]
            bad = httpx.post(f"{url}/v1/modes", json={**change, "mode": "yolo"}, headers=alice)
            assert bad.status_code == 422
            assert httpx.post(f"{url}/v1/modes", json=change, headers=alice).status_code == 200
            assert httpx.get(f"{url}/v1/modes").json() == {"default": "auto", "modes": {"platform": "auto"}}
            (control,) = httpx.get(f"{url}/v1/decisions", params={"kind": "control"}).json()
            assert control["key"] == "mode:platform" and control["actor"] == "alice"
            assert control["reason"] == "observed for two weeks"
            later = ndjson(list(service_points(T0 + 6, 3, inference_a=True)))  # after the first push
            assert httpx.post(f"{url}/v1/telemetry", content=later).status_code == 202
            wait_for(lambda: admin.calls("/admin/restart"))  # auto now: it acts


def test_a_mode_for_a_policy_that_is_not_loaded_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        Modes({"platfrom/vector-db": "observe"}, known={"platform", "checkout"})
    assert "modes: 'platfrom/vector-db' names no loaded policy" in str(caught.value)
    assert caught.value.hint == "did you mean 'platform'?"
    assert (
        Modes({"platform/vector-db": "observe"}, known={"platform"}).of("platform", "vector-db") == "observe"
    )
