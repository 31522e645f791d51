"""The journal on a real PostgreSQL server (``journal: postgresql://...``): the same statements as
on SQLite (the journal's own tests, run again here), versioned migrations, exactly-once dispatch
when several engines race the same decision on one shared database, and global safeguards that
hold when several engines decide at the same moment."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import test_journal

from engine.errors import RuntimeEngineError
from engine.records import SafeguardSpec
from engine.runtime import safeguards
from engine.runtime.decider import Decider
from engine.runtime.journal import MIGRATIONS, DecisionStatus, Journal
from engine.runtime.journal_db import WRITER_LOCK_GRACE_S, open_database, postgres_sql, redacted
from engine.runtime.policies import Tick
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


def _race(race: Callable[[int], None], engines: int) -> None:
    """``race(i)`` for each engine ``i`` in its own thread, at once; returns when all are done."""
    threads = [threading.Thread(target=race, args=(i,)) for i in range(engines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


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

    _race(race, len(journals))
    try:
        every = sorted(d for w in won for d in w)
        assert every == sorted(d["id"] for d in decisions)  # each once, none twice
        assert sum(1 for w in won if w) >= 2  # the engines really raced
        assert journals[0].count("executions") == len(decisions)
    finally:
        for journal in journals:
            journal.close()


# limit -> (engine limits, the decisions' safeguards, engine i's decision j's target, the safeguard
# that blocks the rest). Each lets 3 run: 3 an hour, 3 in flight, 3 of the shared target's 6 replicas.
GLOBAL_LIMITS = {
    "max_per_hour_global": (
        {},
        SafeguardSpec(max_per_hour_global=3),
        lambda i, j: f"svc-{i}-{j}",
        "circuit_breaker",
    ),
    "max_concurrent": ({"max_concurrent": 3}, SafeguardSpec(), lambda i, j: f"svc-{i}-{j}", "max_concurrent"),
    "blast_radius": ({}, SafeguardSpec(blast_radius=0.5), lambda i, j: "shared", "blast_radius"),
}


@pytest.mark.parametrize("path", ["commit", "run_ready"])
@pytest.mark.parametrize("limit", list(GLOBAL_LIMITS))
def test_engines_deciding_at_once_never_exceed_a_global_limit(
    postgres_url: str, limit: str, path: str
) -> None:
    """Eight engines (replicas: own connections on one PostgreSQL) each decide on their own
    targets at the same moment, round after round: new decisions (``commit``) or approved ones
    (``run_ready``). Each engine reads the counts and writes its execution rows in one transaction,
    but without the decision lock two engines read the counts before either commits and both take
    the last free slot: 5 to 8 executions of a limit of 3. With it, exactly the limit's worth run,
    the others are journaled blocked."""
    engine_limits, spec, target, safeguard = GLOBAL_LIMITS[limit]
    allowed = 3
    journals = [Journal(postgres_url, exclusive=False) for _ in range(8)]
    deciders = [
        Decider(j, limits=safeguards.GlobalLimits(**engine_limits), replicas=lambda t: 6) for j in journals
    ]
    rounds = 3
    start = threading.Barrier(len(journals))
    failed: list[BaseException] = []

    def race(i: int) -> None:
        try:
            for j in range(rounds):
                decision = test_journal._decision(
                    i * rounds + j, target=target(i, j), rule=f"rule-{i}-{j}", safeguards=spec
                )
                if path == "commit":
                    start.wait(timeout=60)
                    deciders[i].commit([Tick([], [], 0.0, [decision], [])])
                else:
                    journals[i].record_decision(decision.to_record(), status=DecisionStatus.AWAITING_APPROVAL)
                    start.wait(timeout=60)
                    deciders[i].run_ready(decision)
        except BaseException as exc:  # pragma: no cover - reported below
            failed.append(exc)
            start.abort()

    _race(race, len(journals))
    try:
        assert not failed, failed
        reader = journals[0]
        assert reader.count("decisions") == len(journals) * rounds
        assert reader.count("executions") == allowed
        blocked = reader.recent("decisions", status=DecisionStatus.BLOCKED, limit=100)
        assert len(blocked) == len(journals) * rounds - allowed
        assert {d["reason"].split(":")[0] for d in blocked} == {safeguard}
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


def test_a_new_writer_waits_for_the_lock_of_a_writer_that_is_closing(postgres_url: str) -> None:
    """The one-writer lock goes when the server has ended the last writer's session, a moment after
    its client closed: a journal opened meanwhile waits for it (a restart must not be refused as
    'in use' by its own predecessor) and is refused only if it is still held after the grace."""
    first = Journal(postgres_url)
    closer = threading.Timer(0.5, first.close)
    started = time.monotonic()
    closer.start()
    with Journal(postgres_url) as second:
        waited = time.monotonic() - started
        assert second.count("decisions") == 0
    closer.join()
    assert 0.4 < waited < WRITER_LOCK_GRACE_S


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
    ("url", "shown"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
        (
            "postgresql://u@h/db?sslmode=require&password=secret",
            "postgresql://u@h/db?sslmode=require&password=***",
        ),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


SHARED_TABLES = {"bus_leases", "bus_members", "detector_states"}


def _tables(journal: Journal) -> set[str]:
    rows = journal._db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def _version(journal: Journal) -> int:
    return int(journal._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])


def test_the_replicas_tables_are_the_journal_s_migrations(postgres_url: str, tmp_path: Path) -> None:
    """The leases and detector states are versioned with the journal: a fresh journal has them at
    the latest version; a SQLite journal (one engine, states in a file) passes their version only."""
    with Journal(postgres_url) as journal:
        assert _tables(journal) >= SHARED_TABLES and _version(journal) == MIGRATIONS[-1].version
    with Journal(tmp_path / "j.sqlite") as local:
        names = {r[0] for r in local._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not names & SHARED_TABLES and _version(local) == MIGRATIONS[-1].version


def test_a_journal_of_version_1_migrates_and_keeps_its_detector_states(postgres_url: str) -> None:
    """Version 1 engines created ``detector_states`` (and the leases) themselves, outside the
    migrations: opening such a journal brings it to the latest version and keeps their rows."""
    open_database(postgres_url, MIGRATIONS[:1], read_only=False, exclusive=False).close()
    with psycopg.connect(postgres_url, autocommit=True) as db:  # what version 1's states store made
        db.execute(
            "CREATE TABLE detector_states (detector TEXT NOT NULL, series TEXT NOT NULL, "
            "state BYTEA NOT NULL, PRIMARY KEY (detector, series))"
        )
        db.execute("INSERT INTO detector_states VALUES ('d', 'svc', 'x')")
    with Journal(postgres_url, read_only=True) as old:
        assert _version(old) == 1 and "bus_leases" not in _tables(old)
    with Journal(postgres_url) as journal:
        assert _version(journal) == MIGRATIONS[-1].version and _tables(journal) >= SHARED_TABLES
        assert journal._db.execute("SELECT series FROM detector_states").fetchall()[0][0] == "svc"


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
