"""PostgreSQL restarted under a replica's connections (the journal's, the partition leases', the
detector states'): the operation that meets the broken connection fails, the next one reconnects
and writes again; nothing reconnects inside a transaction; a running engine heals a fault after
the restart. A real server, restarted on the same data and port (``PostgresServer.restart``)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import test_runtime
from test_runtime_support import fit_pipeline, wait_for

from engine.errors import RuntimeEngineError
from engine.runtime.journal import Journal
from engine.runtime.leases import Leases, owners
from engine.runtime.states import PostgresStates
from engine.testing.detectors import stream_factory
from engine.testing.services import PostgresServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    """A cluster of this module's own: restarting the session's would cut other tests' connections."""
    server = PostgresServer()
    if server.missing():
        pytest.skip(server.missing())
    with server:
        yield server


def _control(journal: Journal, value: bool) -> None:
    journal.set_control("paused", value, actor="test")


def _value(journal: Journal, key: str) -> Any:
    row = journal.control(key)
    return None if row is None else row["value"]


def test_the_journal_reconnects_on_its_next_use_and_takes_its_lock_again(
    server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.database()
    caplog.set_level(logging.WARNING, logger="engine.runtime.pgconn")
    with Journal(url) as journal:
        _control(journal, True)
        server.restart()
        with pytest.raises(psycopg.OperationalError):  # the write that meets the broken connection
            _control(journal, False)
        _control(journal, False)  # the next one reconnects
        assert _value(journal, "paused") is False
        assert "the journal: the connection to" in caplog.text and "reconnected to" in caplog.text
        with pytest.raises(RuntimeEngineError, match="in use by another engine"):
            Journal(url)  # the reconnected session holds the one-writer lock again


def test_a_transaction_cut_by_the_restart_fails_whole_and_the_next_one_commits(
    server: PostgresServer,
) -> None:
    url = server.database()
    with Journal(url) as journal:
        _control(journal, False)
        with pytest.raises(psycopg.OperationalError) as cut, journal.transaction():
            journal.set_control("paused", True, actor="test")
            server.restart()
            journal.set_control("cut", True, actor="test")  # never on a new connection, alone
        assert "the connection is closed" not in str(cut.value)  # the cause, not the ROLLBACK's
        with journal.transaction():
            journal.set_control("after", True, actor="test")
        with Journal(url, read_only=True) as reader:
            assert _value(reader, "paused") is False and _value(reader, "cut") is None
            assert _value(reader, "after") is True


def test_leases_and_states_write_again_after_a_restart(server: PostgresServer) -> None:
    url = server.database()
    det, _ = stream_factory("HBOS")()
    leases = Leases(url, stream="s", partitions=2, owner="a", lease_s=60)
    states = PostgresStates(url, det)
    try:
        assert leases.renew().held == {0, 1}
        server.restart()
        with pytest.raises(psycopg.OperationalError):
            leases.renew()
        assert leases.renew().held == {0, 1}  # still within the lease: renewed, not lost
        with pytest.raises(psycopg.OperationalError):
            states.load()
        assert states.load() == {}
        leases.release({1})
        assert owners(url, "s") == {0: "a"}
    finally:
        leases.leave()
        states.close()


def test_a_failed_release_is_not_renewed(server: PostgresServer) -> None:
    """A partition the replica let go of while the server was away is not renewed once it is back:
    the bus no longer reads it, so its lease must run out for another replica to take it."""
    url = server.database()
    leases = Leases(url, stream="s", partitions=2, owner="a", lease_s=60)
    try:
        leases.renew()
        server.restart()
        with pytest.raises(psycopg.OperationalError):
            leases.release({1})
        assert leases.renew().held == {0}
    finally:
        leases.leave()


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return fit_pipeline()


def test_a_running_engine_heals_after_its_postgresql_restarts(
    tmp_path: Path, pipeline: Any, server: PostgresServer
) -> None:
    url = server.database()
    with test_runtime.running_harness(tmp_path, pipeline, journal=url, state_snapshot_s=0) as harness:
        harness.push(5)
        server.restart()
        harness.push(3)  # the ticks that meet the broken connections fail; later ones reconnect
        test_runtime.test_pushed_points_lead_to_a_verified_action_in_the_journal(harness)


def test_an_engine_keeps_scoring_and_logs_each_failure_once_while_postgresql_is_away(
    tmp_path: Path, pipeline: Any, server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Telemetry pushed while the journal's and the states' database is away is scored, not
    dead-lettered (a detector-state snapshot that cannot be written waits for the next tick), and
    each place that fails logs one traceback for the outage, then a line when it works again
    (before: every supervision pass and every tick logged one, 129 in 4 s, and the ticks'
    points went to the dead letter)."""
    url = server.database()
    caplog.set_level(logging.INFO, logger="engine")
    with test_runtime.running_harness(tmp_path, pipeline, journal=url, state_snapshot_s=0) as harness:
        harness.push(3)
        before = len(caplog.records)
        away = threading.Thread(target=server.restart, kwargs={"down_s": 4.0})
        away.start()
        pushes = 0
        while away.is_alive():
            harness.push(1)
            pushes += 1
            time.sleep(0.05)
        away.join()
        harness.push(3)
        wait_for(lambda: "detector states works again" in caplog.text, timeout=20)
        records = caplog.records[before:]
        tracebacks = Counter(r.getMessage() for r in records if r.exc_info)
        dead = harness.engine.dead_letter.path
        assert pushes >= 20
        assert tracebacks and all(n == 1 for n in tracebacks.values()), tracebacks
        assert sum(r.levelno >= logging.ERROR for r in records) <= len(tracebacks) + 2
        assert not dead.exists() or dead.read_text() == ""
        assert harness.engine.metrics.errors.labels("states")._value.get() >= 1
        test_runtime.test_pushed_points_lead_to_a_verified_action_in_the_journal(harness)


def test_connections_ask_for_tcp_keepalives_unless_the_url_sets_them(server: PostgresServer) -> None:
    """A half-open connection (a firewall dropped it silently) is found dead in about a minute."""
    url = server.database()
    with Journal(url) as journal:
        dsn = journal._db._conn.current.info.dsn
        assert "keepalives=1" in dsn and "keepalives_idle=30" in dsn and "tcp_user_timeout=60000" in dsn
    sep = "&" if "?" in url else "?"
    with Journal(f"{url}{sep}keepalives_idle=7") as journal:
        dsn = journal._db._conn.current.info.dsn
        assert "keepalives_idle=7" in dsn and "keepalives_interval=10" in dsn


def _taken(caplog: pytest.LogCaptureFixture, after: int = 0) -> set[str]:
    """The partitions the replica took over (adopted: states, leftovers, entries) in the log."""
    messages = [r.getMessage() for r in caplog.records[after:]]
    return {m.split()[2] for m in messages if m.startswith("took partition ")}


def test_a_replica_down_longer_than_its_leases_drops_them_and_takes_them_back(
    tmp_path: Path, pipeline: Any, server: PostgresServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL away for longer than ``lease_s``: the replica stops reading its partitions (it
    can no longer trust its leases), then renews on a new connection, takes every one back (one
    whose takeover the restart cut included), and heals a fault through the bus."""
    url = server.database()
    caplog.set_level(logging.INFO, logger="engine")
    bus = {"url": redis_url, "stream": "t:restart", "partitions": 4, "lease_s": 2.0}
    with test_runtime.running_harness(
        tmp_path, pipeline, journal=url, state_snapshot_s=0, sources={"redis": bus}
    ) as harness:
        bus_of = harness.engine.bus
        assert bus_of is not None
        # Read, not only leased: a restart that cuts the first takeover lets the partitions go on
        # that path (the cut takeover is let go), never reaching the leases' expiry tested here.
        wait_for(lambda: bus_of._reading == {0, 1, 2, 3}, timeout=20)
        server.restart(down_s=3.0)
        wait_for(lambda: "the partition leases were not renewed" in caplog.text)
        after = len(caplog.records)
        wait_for(lambda: _taken(caplog, after) == {"0", "1", "2", "3"}, timeout=20)
        assert "the partition leases: reconnected to" in caplog.text
        assert harness.engine.bus is not None and harness.engine.bus.parts.owned == {0, 1, 2, 3}
        test_runtime.test_pushed_points_lead_to_a_verified_action_in_the_journal(harness)
