"""The engine journal: durable settings, readable from a second connection, filters, idempotency."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from engine.errors import RuntimeEngineError
from engine.records import Decision, SafeguardSpec, VerifySpec
from engine.runtime.journal import DecisionStatus, ExecutionStatus, Journal


def _decision(i: int = 0, service: str = "inference-a", **kw: object) -> Decision:
    base = dict(
        id=f"dec-{i}",
        event_id=f"evt-{i}",
        service=service,
        target=service,
        action="restart",
        params={"service": service},
        policy="memory",
        policy_version="3",
        rule="restart-on-leak",
        bundle_version="b-7",
        detector="IForest",
        detector_version="12",
        window_start=100.0,
        window_end=160.0,
        safeguards=SafeguardSpec(cooldown_s=60, max_per_hour=2, blast_radius=0.5),
        verify=VerifySpec(deadline_s=30, score_below=0.5, metrics={"memory_util": (None, 0.8)}),
    )
    base.update(kw)
    return Decision(**base)  # type: ignore[arg-type]


def test_journal_is_wal_with_full_sync(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_second_connection_reads_while_writer_is_open(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    writer = Journal(path)
    try:
        d = _decision()
        writer.record_decision(d.to_record(), status=DecisionStatus.READY)
        reader = Journal(path, read_only=True)
        try:
            rows = reader.recent("decisions")
            assert [r["id"] for r in rows] == ["dec-0"]
            with pytest.raises(RuntimeEngineError, match="read-only"):
                reader.set_decision_status("dec-0", "x")
            writer.set_decision_status("dec-0", DecisionStatus.VERIFIED)  # reader still open
            assert reader.decision("dec-0")["status"] == DecisionStatus.VERIFIED  # type: ignore[index]
        finally:
            reader.close()
    finally:
        writer.close()


def test_decision_round_trips_with_versions_and_window(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        d = _decision()
        journal.record_decision(d.to_record(), status=DecisionStatus.READY)
        row = journal.decision(d.id)
        assert row is not None
        assert (row["bundle_version"], row["detector_version"], row["policy_version"]) == ("b-7", "12", "3")
        assert (row["window_start"], row["window_end"]) == (100.0, 160.0)
        assert Decision.from_record(row) == d


def test_idempotency_key_refuses_a_second_execution(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        d = _decision().to_record()
        journal.record_decision(d, status=DecisionStatus.READY)
        first = journal.start_execution(
            d, kind="action", action="restart", params={}, idempotency_key="dec-0:action"
        )
        again = journal.start_execution(
            d, kind="action", action="restart", params={}, idempotency_key="dec-0:action"
        )
        assert first is not None and again is None
        assert len(journal.executions_for("dec-0")) == 1


def test_target_counts_track_executions_in_flight_and_failures(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        now = time.time()
        for i in range(3):
            d = _decision(i).to_record()
            journal.record_decision(d, status=DecisionStatus.EXECUTING)
            journal.start_execution(
                d, kind="action", action="restart", params={}, idempotency_key=f"k{i}", replicas=2
            )
        other = _decision(9, service="vector-db").to_record()
        journal.record_decision(other, status=DecisionStatus.FAILED)
        exe = journal.start_execution(other, kind="action", action="restart", params={}, idempotency_key="k9")
        assert exe is not None
        journal.finish_execution(exe, ExecutionStatus.FAILED, error="boom")
        journal.settle_execution(exe)
        counts = journal.target_counts("inference-a", now=now + 1, rule="restart-on-leak")
        assert counts.rule_in_flight == 3  # the failed vector-db one is settled
        assert journal.target_counts("inference-a", now=now, rule="other").rule_in_flight == 0
        assert counts.executions_last_hour == 3
        assert counts.in_flight_replicas == 6
        assert counts.global_executions_last_hour == 4
        assert counts.global_in_flight == 3
        assert counts.recent_failures == 1
        assert counts.last_execution_ts is not None and counts.last_execution_ts <= now + 1
        later = journal.target_counts("inference-a", now=now + 3700)
        assert later.executions_last_hour == 0 and later.global_executions_last_hour == 0


def test_batched_safeguard_counts_equal_per_target_counts_and_count_the_batch(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        now = time.time()
        for i, service in enumerate(["inference-a", "inference-a", "vector-db"]):
            d = _decision(i, service=service, rule=f"r{i % 2}").to_record()
            journal.record_decision(d, status=DecisionStatus.EXECUTING)
            journal.start_execution(
                d, kind="action", action="restart", params={}, idempotency_key=f"k{i}", replicas=i + 1
            )
        targets = ["inference-a", "vector-db", "gateway"]
        batch, active = journal.decision_context(targets, ["r0", "r1", "r9"], now=now + 1)
        assert active == journal.active_decision_keys()
        for target in targets:
            for rule in ("r0", "r1", "r9"):
                assert batch.for_target(target, rule) == journal.target_counts(target, now=now + 1, rule=rule)
        assert batch.for_target("gateway", "r9").last_execution_ts is None
        batch.started("gateway", "r9", 2, now + 1)
        after = batch.for_target("gateway", "r9")
        assert (after.last_execution_ts, after.executions_last_hour, after.in_flight_replicas) == (
            now + 1,
            1,
            2,
        )
        assert (after.global_in_flight, after.global_executions_last_hour, after.rule_in_flight) == (4, 4, 1)
        assert journal.active_decision_keys() == {
            ("inference-a", "r0", "restart"),
            ("inference-a", "r1", "restart"),
            ("vector-db", "r0", "restart"),
        }


def test_a_batch_of_new_decisions_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """Multi-row writes of the decider: a new execution whose key was used fails the whole batch."""
    with Journal(tmp_path / "j.sqlite") as journal:
        records = [_decision(i, rule=f"r{i}").to_record() for i in range(3)]
        with journal.transaction():
            ids = journal.record_decisions([(r, DecisionStatus.EXECUTING, None) for r in records])
            exes = journal.start_new_executions([(r, f"{r['id']}:action", 2) for r in records])
        assert ids == [r["id"] for r in records] and len(set(exes)) == 3
        assert {e["idempotency_key"] for e in journal.recent("executions")} == {f"{i}:action" for i in ids}
        more = [_decision(i, rule=f"r{i}").to_record() for i in range(3, 5)]
        with pytest.raises(RuntimeEngineError, match="used idempotency key"), journal.transaction():
            journal.record_decisions([(r, DecisionStatus.EXECUTING, None) for r in more])
            journal.start_new_executions(
                [(more[0], f"{more[0]['id']}:action", 1), (records[0], f"{ids[0]}:action", 1)]
            )
        assert journal.count("decisions") == 3 and journal.count("executions") == 3


def test_batches_beyond_sqlites_parameter_limit_are_written_whole(tmp_path: Path) -> None:
    """2,000 decisions x 20 columns is 40,000 bound parameters, over SQLite's default 32,766 per
    statement (some builds allow more: the test lowers this connection's limit to the default)."""
    with Journal(tmp_path / "j.sqlite") as journal:
        journal._db.connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)
        records = [_decision(i, rule=f"r{i}").to_record() for i in range(2000)]
        with journal.transaction():
            ids = journal.record_decisions([(r, DecisionStatus.EXECUTING, None) for r in records])
            exes = journal.start_new_executions([(r, f"{r['id']}:action", 1) for r in records])
            journal.start_verifications([(d, e, 1.0, 2.0) for d, e in zip(ids, exes, strict=True)])
        assert journal.count("decisions") == journal.count("executions") == 2000
        assert journal.count("verifications") == 2000


def test_an_anomaly_event_round_trips_through_the_journal(tmp_path: Path) -> None:
    """What recovery replays is exactly what the engine journaled."""
    from engine.records import AnomalyEvent

    event = AnomalyEvent(
        service="s", detector="d", detector_version="1", bundle_version="b", score=0.95, threshold=0.5,
        contributing=("latency",), features=(("latency__z", 2.0),), window_start=1.0, window_end=2.0,
        ts=1.0, arrival=3.0, metrics={"latency": 1.0},
    )  # fmt: skip
    assert event.severity == "high" and event.moment == 2.0
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.record_events([(event.model_dump(), "anomaly")], ts=5.0)
        (row,) = journal.events_since(0.0)
    assert AnomalyEvent.model_validate(row["payload"]) == event
    assert row["contributing"] == ["latency"] and row["detector_version"] == "1"


def test_recent_filters_by_service_status_since_and_kind(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.record_decision(_decision(1).to_record(), status=DecisionStatus.BLOCKED, reason="cooldown: x")
        time.sleep(0.01)
        cut = time.time()
        journal.record_decision(_decision(2).to_record(), status=DecisionStatus.VERIFIED)
        journal.record_decision(_decision(3, service="vector-db").to_record(), status=DecisionStatus.VERIFIED)
        journal.record_event({"id": "e1", "service": "vector-db", "score": 0.9}, kind="anomaly")
        assert [r["id"] for r in journal.recent("decisions", service="inference-a")] == ["dec-2", "dec-1"]
        assert [r["id"] for r in journal.recent("decisions", status="verified")] == ["dec-3", "dec-2"]
        assert [r["id"] for r in journal.recent("decisions", since=cut)] == ["dec-3", "dec-2"]
        assert [r["id"] for r in journal.recent("events", service="vector-db")] == ["e1"]
        with pytest.raises(RuntimeEngineError, match="unknown journal kind"):
            journal.recent("bananas")


def test_approval_settles_once(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.record_decision(_decision().to_record(), status=DecisionStatus.AWAITING_APPROVAL)
        aid = journal.create_approval("dec-0", ttl_s=60, allowed_approvers=["alice"])
        assert [a["id"] for a in journal.pending_approvals()] == [aid]
        assert journal.settle_approval(aid, "approved", approver="alice", reason="ok")
        assert not journal.settle_approval(aid, "rejected", approver="bob", reason="late")
        row = journal.approval(aid)
        assert row is not None and (row["status"], row["approver"]) == ("approved", "alice")
        assert journal.pending_approvals() == []


def test_a_committed_row_survives_an_unclosed_writer(tmp_path: Path) -> None:
    """No close, no checkpoint: what was committed is there for the next process."""
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    journal.record_decision(_decision().to_record(), status=DecisionStatus.READY)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("SELECT status FROM decisions").fetchall() == [("ready",)]
    finally:
        raw.close()
        journal.close()


def test_transaction_rolls_back_everything_on_error(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        with pytest.raises(ValueError), journal.transaction():
            journal.record_decision(_decision().to_record(), status=DecisionStatus.READY)
            raise ValueError("boom")
        assert journal.decision("dec-0") is None


def test_read_only_needs_an_existing_journal(tmp_path: Path) -> None:
    with pytest.raises(RuntimeEngineError, match="no journal here"):
        Journal(tmp_path / "missing.sqlite", read_only=True)


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path) as first:
        with pytest.raises(RuntimeEngineError, match=r"j\.sqlite\.lock") as info:
            Journal(path)
        assert "in use by another engine" in str(info.value) and info.value.hint
        with Journal(path, read_only=True) as reader:  # readers never take the lock
            assert reader.count("decisions") == 0
        first.record_decision(_decision().to_record(), status=DecisionStatus.READY)
    with Journal(path) as again:  # released on close
        assert again.count("decisions") == 1


def test_record_events_in_bulk_keeps_every_event_once(tmp_path: Path) -> None:
    """More events than one INSERT carries, and a repeated id ignored (as one at a time would)."""
    from engine.runtime import journal as journal_module

    n = journal_module._ROWS_PER_STATEMENT * 2 + 7
    events = [({"id": f"e{i}", "service": f"s{i % 3}", "score": i / n}, "anomaly") for i in range(n)]
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.record_events([*events, ({"id": "e0", "service": "other", "score": 9.0}, "health")], ts=5.0)
        assert journal.count("events") == n
        rows = journal.events_since(0.0)
        assert [r["id"] for r in rows] == [f"e{i}" for i in range(n)]
        assert rows[0]["service"] == "s0" and rows[-1]["score"] == (n - 1) / n
        assert rows[5]["payload"] == {"id": "e5", "service": "s2", "score": 5 / n}


def test_every_control_change_is_kept_with_actor_and_reason(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.set_control("paused", True, actor="alice", reason="incident bridge")
        journal.set_control("paused", False, actor="bob", reason=None)
        journal.set_control("mode:latency", "observe", actor="alice", reason="new policy")
        assert journal.control("paused") == {
            **journal.control("paused"),  # type: ignore[dict-item]
            "value": False,
            "actor": "bob",
        }
        history = journal.recent("control")
        assert [(r["key"], r["value"], r["actor"], r["reason"]) for r in history] == [
            ("mode:latency", "observe", "alice", "new policy"),
            ("paused", False, "bob", None),
            ("paused", True, "alice", "incident bridge"),
        ]
        assert [r["value"] for r in journal.recent("control", status="paused")] == [False, True]
        assert journal.count("control", "paused") == 2
