"""Shadow replay: the default detector and the shipped policies over stored history, no side effects."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.chaos.replay import replay, replay_bundle
from engine.errors import EngineError

RULES = Path(__file__).resolve().parents[1] / "rules"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from engine.telemetry.store import TelemetryStore
    from engine.telemetry.synth import generate, load_config

    data = generate(load_config(), days=3.0, seed=11)
    db = tmp_path_factory.mktemp("replay") / "telemetry.duckdb"
    with TelemetryStore(db) as store:
        store.insert_points(data.points, source="synth")
        store.insert_incidents(data.incidents)
    return db, data


@pytest.fixture(scope="module")
def pipeline() -> Any:
    from engine.chaos.api import default_detector

    return default_detector()


def test_replay_lines_decisions_up_with_labeled_incidents(history: tuple[Path, Any], pipeline: Any) -> None:
    from engine.policy.loader import load_policies
    from engine.telemetry.store import TelemetryStore

    db, data = history
    with TelemetryStore(db, read_only=True) as store:
        before = store.summary()
    since, until = data.start + timedelta(days=1), data.end
    result = replay(pipeline, load_policies(RULES), db, since=since, until=until)
    totals = result.totals()
    labeled = data.incidents.filter(data.incidents["start"] >= since)
    assert totals["incidents"] == labeled.height > 0
    assert 0 < totals["anomalies"] < totals["rows"] * 0.2
    assert totals["incidents_detected"] >= 1
    assert set(result.per_service) == set(data.topology)
    assert totals["decisions"] == len(result.decisions) > 0
    for d in result.decisions:
        assert since.timestamp() <= d.ts <= until.timestamp() + 60
        assert d.outcome in ("execute", "approval", "blocked", "duplicate")
        if d.incident is not None:
            assert d.incident in set(labeled.filter(labeled["service"] == d.target)["kind"].to_list())
    assert all(d.action == "rollback_model" for d in result.approvals)  # the only high-risk policy
    assert "shadow replay" in result.render() and '"totals"' in result.to_json()
    with TelemetryStore(db, read_only=True) as store:
        assert store.summary() == before  # nothing written


def test_replay_is_deterministic(history: tuple[Path, Any], pipeline: Any) -> None:
    from engine.policy.loader import load_policies

    db, data = history
    since, until = data.end - timedelta(hours=12), data.end
    runs = [replay(pipeline, load_policies(RULES), db, since=since, until=until) for _ in range(2)]
    assert [(d.ts, d.target, d.action, d.outcome) for d in runs[0].decisions] == [
        (d.ts, d.target, d.action, d.outcome) for d in runs[1].decisions
    ]


def test_replay_refuses_what_it_cannot_do(history: tuple[Path, Any], pipeline: Any, tmp_path: Path) -> None:
    from engine.policy.loader import load_policies

    db, data = history
    with pytest.raises(EngineError, match="not after"):
        replay(pipeline, load_policies(RULES), db, since=data.end, until=data.start)
    with pytest.raises(EngineError, match="no telemetry"):
        replay(
            pipeline,
            load_policies(RULES),
            db,
            since=data.end + timedelta(days=30),
            until=data.end + timedelta(days=31),
        )
    (tmp_path / "not-a-bundle").mkdir()
    with pytest.raises(EngineError):
        replay_bundle(tmp_path / "not-a-bundle", db, since=data.start, until=data.end)


@pytest.mark.slow
def test_replay_decides_what_an_engine_fed_the_same_points_decides(
    history: tuple[Path, Any], pipeline: Any, tmp_path: Path
) -> None:
    """engine == replay: the same points, one feature interval per tick, through a running engine
    (kill switch on, so every decision is journaled as blocked and none is dropped as a duplicate)
    and through shadow replay give the same anomaly events (every field but ids, arrival times and
    versions: scores, features, latest values, diagnosis) and the same decisions."""
    import json
    import time

    from engine.policy.loader import load_policies
    from engine.runtime.components import assemble
    from engine.runtime.config import load_settings
    from engine.runtime.server import build_engine
    from engine.telemetry.store import TelemetryStore

    db, data = history
    first = (
        data.incidents.filter(data.incidents["start"] >= data.start + timedelta(days=1))
        .sort("start")
        .row(0, named=True)
    )
    since, until = first["start"] - timedelta(hours=2), first["end"] + timedelta(hours=1)
    result = replay(pipeline, load_policies(RULES), db, since=since, until=until)
    with TelemetryStore(db, read_only=True) as store:
        points = store.points(start=since - timedelta(seconds=pipeline.warmup_s), end=until)
    interval = pipeline.interval_s
    ticks: dict[int, list[tuple[float, str, str, float]]] = {}
    frame = points.sort("ts")
    stamps = (frame["ts"].dt.epoch("us").to_numpy() / 1e6).tolist()
    for point in zip(
        stamps, frame["service"].to_list(), frame["metric"].to_list(), frame["value"].to_list(), strict=True
    ):
        ticks.setdefault(int(point[0] // interval), []).append(point)
    settings = load_settings(overrides={"port": 0, "tick_s": 0.005, "verify_interval_s": 0.05}, environ={})
    engine = build_engine(assemble(pipeline, RULES, bundle_version="replay"), settings, tmp_path)
    engine.writer.set_paused(True, actor="test", reason="compare with replay")
    engine.start()
    try:
        fed = 0
        for tick in ticks.values():  # one scoring tick each: wait for it before the next
            assert engine.ingest(tick)
            fed += len(tick)
            deadline = time.monotonic() + 30
            while engine.points_scored < fed and time.monotonic() < deadline:
                time.sleep(0.001)
            assert engine.points_scored == fed
    finally:
        engine.stop()
    start = since.timestamp() if since.tzinfo else (since - datetime(1970, 1, 1)).total_seconds()
    from engine.runtime.journal import Journal

    with Journal(tmp_path / "engine.sqlite", read_only=True) as journal:
        anomalies = [
            e for e in journal.recent("events", status="anomaly", limit=10**6) if e["payload"]["ts"] >= start
        ]
        decisions = journal.recent("decisions", limit=10**6)
    assert len(anomalies) == result.anomalies > 0
    ignored = {"id", "arrival", "bundle_version", "detector_version"}

    def same(event: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in event.items() if k not in ignored}

    engine_events = sorted((same(e["payload"]) for e in anomalies), key=lambda e: (e["ts"], e["service"]))
    replay_events = [same(json.loads(json.dumps(e.model_dump(), default=str))) for e in result.events]
    assert engine_events == sorted(replay_events, key=lambda e: (e["ts"], e["service"]))
    engine_decided = sorted(
        (d["window_end"], d["service"], d["target"], d["action"], d["rule"], d["risk"])
        for d in decisions
        if d["window_end"] >= start
    )
    replay_decided = sorted((d.ts, d.service, d.target, d.action, d.rule, d.risk) for d in result.decisions)
    assert engine_decided == replay_decided and len(replay_decided) >= 1
    assert {d["status"] for d in decisions} == {"blocked"}


def test_replay_enacts_a_tick_as_the_decider_does() -> None:
    """Replay's decisions go through the decider's own core: a second decision for a remedy the
    same tick started is a duplicate (one incident, one action; judged one by one it read as
    blocked by the cooldown), a high-risk one waits for approval, and the cooldown holds into the
    next ticks until it has passed."""
    from engine.chaos.replay import _Ledger, judge
    from engine.records import ApprovalSpec, Decision, SafeguardSpec

    def decided(i: int, target: str, action: str = "restart", approval: bool = False) -> Decision:
        return Decision(
            id=f"dec-{i}", event_id=f"evt-{i}", service=target, target=target, action=action, params={},
            policy="p", rule=f"r-{action}", safeguards=SafeguardSpec(cooldown_s=600),
            approval=ApprovalSpec(required=approval),
        )  # fmt: skip

    ledger = _Ledger()
    windows = {"a": [(0.0, 2000.0, "memory_leak")]}
    tick = [decided(1, "a"), decided(2, "a"), decided(3, "b", "rollback_model", approval=True)]
    first = judge(tick, 1000.0, ledger, {"a": 2}, windows)
    assert [(d.outcome, d.incident) for d in first] == [
        ("execute", "memory_leak"),
        ("duplicate", "memory_leak"),
        ("approval", None),
    ]
    (again,) = judge([decided(4, "a")], 1300.0, ledger, {"a": 2}, windows)
    assert again.outcome == "blocked" and again.reason.startswith("cooldown")
    (after,) = judge([decided(5, "a")], 1700.0, ledger, {"a": 2}, windows)
    assert after.outcome == "execute"
