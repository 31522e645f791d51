"""The journal on a real PostgreSQL server (``journal: postgresql://...``): the same statements as
on SQLite (the journal's own tests, run again here), versioned migrations, and exactly-once
dispatch when several engines race the same decision on one shared database."""

from __future__ import annotations

import threading

import pytest
import test_journal

from engine.errors import RuntimeEngineError
from engine.runtime.journal import MIGRATIONS, DecisionStatus, Journal
from engine.runtime.journal_db import postgres_sql
from engine.testing.services import PostgresServer

# The journal's behaviour tests that do not look at SQLite itself (WAL, its file, its limits).
SHARED = [
    "test_decision_round_trips_with_versions_and_window",
    "test_idempotency_key_refuses_a_second_execution",
    "test_target_counts_track_executions_in_flight_and_failures",
    "test_batched_safeguard_counts_equal_per_target_counts_and_count_the_batch",
    "test_a_batch_of_new_decisions_is_written_whole_or_not_at_all",
    "test_an_anomaly_event_round_trips_through_the_journal",
    "test_recent_filters_by_service_status_since_and_kind",
    "test_approval_settles_once",
    "test_transaction_rolls_back_everything_on_error",
    "test_record_events_in_bulk_keeps_every_event_once",
    "test_every_control_change_is_kept_with_actor_and_reason",
]


class Databases:
    """Stands in for ``tmp_path`` in the SQLite tests: ``folder / "j.sqlite"`` is a fresh database
    of the server (the same one each time a test asks for the same name)."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.urls: dict[str, str] = {}

    def __truediv__(self, name: str) -> str:
        if name not in self.urls:
            self.urls[name] = self.server.database()
        return self.urls[name]


@pytest.mark.parametrize("name", SHARED)
def test_the_journals_tests_pass_on_postgres(name: str, postgres_server: PostgresServer) -> None:
    getattr(test_journal, name)(Databases(postgres_server))


def test_health_history_reads_the_same_on_postgres(postgres_url: str) -> None:
    with Journal(postgres_url) as journal:
        for ts, anomalous in ((10.0, True), (20.0, False), (30.0, True), (40.0, False)):
            journal.record_event({"service": "db", "anomalous": anomalous}, kind="health", ts=ts)
        journal.record_event({"service": "api", "anomalous": True}, kind="health", ts=25.0)
        assert journal.last_health() == {"db": False, "api": True}
        assert journal.healthy_again("db", after=10.0, until=35.0) == 20.0
        assert journal.healthy_again("db", after=20.0, until=35.0) is None
        assert [e["ts"] for e in journal.events_since(15.0)] == [20.0, 25.0, 30.0, 40.0]


def test_two_engines_racing_the_same_decision_execute_it_once(postgres_url: str) -> None:
    """Eight engines (own connections, not the one-writer lock: replicas) race 40 decisions' rollbacks
    at once, each through the executor's step (a transaction that inserts the execution under its
    idempotency key before calling): every rollback is executed exactly once."""
    decisions = [test_journal._decision(i).to_record() for i in range(40)]
    with Journal(postgres_url) as first:
        first.record_decisions([(d, DecisionStatus.VERIFYING, None) for d in decisions])
    journals = [Journal(postgres_url, exclusive=False) for _ in range(8)]
    won: list[list[str]] = [[] for _ in journals]
    start = threading.Barrier(len(journals))

    def race(i: int) -> None:
        journal = journals[i]
        start.wait()
        for decision in decisions:
            with journal.transaction():
                execution = journal.start_execution(
                    decision,
                    kind="rollback",
                    action="rollback",
                    params={},
                    idempotency_key=f"{decision['id']}:rollback",
                )
                if execution is not None:
                    journal.set_decision_status(decision["id"], DecisionStatus.ROLLED_BACK)
                    won[i].append(decision["id"])

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(journals))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        every = sorted(d for w in won for d in w)
        assert every == sorted(d["id"] for d in decisions)  # each once, none twice
        assert sum(1 for w in won if w) >= 2  # the engines really raced
        assert journals[0].count("executions") == len(decisions)
    finally:
        for journal in journals:
            journal.close()


def test_a_second_writer_is_refused_and_migrations_apply_once(postgres_url: str) -> None:
    with Journal(postgres_url) as first:
        with pytest.raises(RuntimeEngineError, match="in use by another engine"):
            Journal(postgres_url)
        with Journal(postgres_url, read_only=True) as reader:
            assert reader.count("decisions") == 0
            with pytest.raises(Exception, match="read-only"):
                reader._db.execute("INSERT INTO meta VALUES ('x', 'y')")
        first.record_decision(test_journal._decision(1).to_record(), status=DecisionStatus.READY)
    with Journal(postgres_url) as again:  # released on close; the schema is not applied twice
        assert again.count("decisions") == 1
        assert again._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
            MIGRATIONS[-1][0]
        )


def test_a_journal_newer_than_the_engine_is_refused(postgres_url: str) -> None:
    with Journal(postgres_url) as journal:
        journal._db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(RuntimeEngineError, match="version 99, newer than this engine"):
        Journal(postgres_url)


def test_an_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(RuntimeEngineError, match=r"u:\*\*\*@127.0.0.1:1/db: cannot connect") as err:
        Journal("postgresql://u:secret@127.0.0.1:1/db")
    assert "secret" not in str(err.value)


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        (
            "SELECT count(*) FROM (SELECT 1 FROM t LIMIT :cap)",
            "SELECT count(*) FROM (SELECT 1 FROM t LIMIT %(cap)s) AS _q0",
        ),
        ("INSERT OR IGNORE INTO t VALUES (?,?)", "INSERT INTO t VALUES (%s,%s) ON CONFLICT DO NOTHING"),
        (
            "SELECT json_group_array(json_array(a, b)) FROM t INDEXED BY i",
            "SELECT coalesce(json_agg(json_build_array(a, b))::text, '[]') FROM t",
        ),
    ],
)
def test_statements_translate(sqlite: str, postgres: str) -> None:
    assert postgres_sql(sqlite) == postgres
