"""Per-series detector states kept by a store: a restarted engine resumes where it stopped.

Why: the stream detector's per-series state (open buckets, transform windows, the likelihood's
averages, the spatial range, a per-series model's rows) takes hours of telemetry to build; an
engine restarted without it re-warms for that long, blind to slow faults. The scoring stage
(``engine.runtime.scoring``) writes the states of the series its ticks touched to a store every
``state_snapshot_s`` seconds (60 by default) and at a clean stop, and reads them back at start.
With ``state_snapshot_s: 0`` a tick's states are committed before its scores leave the stage, so a
crash (kill -9) loses no state of anything scored; a longer interval costs less and loses at most
that interval's changes.

Whoever scores a series keeps its state: the engine's own scoring stage, or each scoring worker
(``engine.runtime.shards``) for the services it owns. A store is opened with ``owns`` (the
worker's share of the services) and loads only those; since every worker reads the same store, a
restart with another number of workers finds each series' state wherever it now goes.

``StateStore`` is the seam (load, save, close). ``SqliteStates``: one file beside the journal
(WAL, ``synchronous=FULL``, like the journal; the workers' processes share it). With a journal on
PostgreSQL, ``PostgresStates`` keeps them in the same database, where replicas share them.

Replicas (``sources.redis``, ``engine.runtime.bus``) own services by partition lease, and a lease
moves: their store is opened owning nothing (``Partitions``, which the bus fills as it takes
partitions); the stage ``adopt``s a taken partition's states with ``load(services)`` and a store
saves and deletes only the series it owns at that moment, so a replica that lost a partition never
overwrites the state its new owner keeps.

A snapshot belongs to one detector: the store keeps the detector's fingerprint (the digest of its
artifact's ``detector.json``: config, calibrations, threshold). States written by another
detector are discarded with a warning, never read into a detector they were not written for; a
series whose state cannot be read is dropped alone (logged) and starts afresh.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from engine.errors import DetectorError, RuntimeEngineError
from engine.runtime.journal import migrate
from engine.runtime.journal_db import is_url, redacted
from engine.runtime.pgconn import Reconnecting

__all__ = ["PostgresStates", "SqliteStates", "StateStore", "detector_fingerprint", "state_store"]

log = logging.getLogger(__name__)


Owns = Callable[[str], bool]  # a store's share of the series (by service): a worker's services


class StateStore(Protocol):
    """Where a scoring stage keeps its series' states (``StreamDetector.state_to_bytes``)."""

    def load(self, owns: Owns | None = None) -> dict[str, Any]:
        """The stored states of the series this store owns (or ``owns`` picks); one that cannot be
        read is dropped alone."""
        ...

    def save(self, states: Mapping[str, Any], series: Iterable[str]) -> None:
        """Write the states of those of ``series`` the store owns (those no longer in ``states``
        are deleted), atomically."""
        ...

    def close(self) -> None: ...


def state_store(
    settings: Any, path: Path | str, detector: Any, owns: Owns | None = None
) -> StateStore | None:
    """The engine's store (``state_snapshot_s``; ``path``: ``EngineSettings.states_path``, a file
    or the PostgreSQL journal's URL) for the series ``owns`` picks (all by default), or None when
    states are not kept."""
    if settings.state_snapshot_s is None or not hasattr(detector, "state_to_bytes"):
        return None
    redis = settings.sources.redis
    if owns is None and redis is not None:  # a replica: owns nothing until it leases partitions
        from engine.runtime.leases import Partitions

        owns = Partitions(redis.partitions)
    if is_url(path):
        return PostgresStates(str(path), detector, owns)
    return SqliteStates(Path(path), detector, owns)


def _restore(
    rows: Iterable[tuple[str, bytes]], detector: Any, owns: Owns | None, where: str
) -> dict[str, Any]:
    """The states of ``rows`` (series, blob) the store owns; one that cannot be read is dropped alone."""
    out: dict[str, Any] = {}
    for series, blob in rows:
        if owns is not None and not owns(series):
            continue
        try:
            out[series] = detector.state_from_bytes(bytes(blob))
        except DetectorError as exc:
            log.warning("%s: the state of %r cannot be restored (%s); it re-warms", where, series, exc)
    if out:
        log.info("restored the detector state of %d series from %s", len(out), where)
    return out


def _changes(
    states: Mapping[str, Any], series: Iterable[str], detector: Any, owns: Owns | None
) -> tuple[list[tuple[str, bytes]], list[tuple[str]]]:
    """(series, blob) to write and (series,) to delete: those no longer in ``states``; only
    those the store ``owns``."""
    keep, gone = [], []
    for name in series:
        if owns is not None and not owns(name):
            continue
        state = states.get(name)
        if state is None:
            gone.append((name,))
        else:
            keep.append((name, detector.state_to_bytes(state)))
    return keep, gone


def detector_fingerprint(detector: Any) -> str:
    """The digest of a stream detector's ``detector.json`` (what its states are valid for)."""
    from engine.detectors.artifact import detector_json

    return hashlib.sha256(detector_json(detector)).hexdigest()


class SqliteStates:
    """One SQLite file of per-series states for one detector, shared by the processes that score
    (each saves and loads the series it ``owns``)."""

    def __init__(self, path: Path, detector: Any, owns: Owns | None = None) -> None:
        self.path = path
        self.detector = detector
        self.owns = owns
        fingerprint = detector_fingerprint(detector)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS states (series TEXT PRIMARY KEY, state BLOB NOT NULL)"
            )
            with self._db:  # the workers open the file at once: one checks the detector at a time
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute("SELECT value FROM meta WHERE key = 'detector'").fetchone()
                if row is None or row[0] != fingerprint:
                    if row is not None:
                        log.warning("%s: states of another detector discarded; every series re-warms", path)
                    self._db.execute("DELETE FROM states")
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES ('detector', ?)", (fingerprint,))
        except sqlite3.Error as exc:
            raise RuntimeEngineError(
                f"{path}: the detector state file cannot be opened: {exc}",
                hint="delete it (the engine then re-warms every series) or set state_snapshot_s: null",
            ) from exc

    def load(self, owns: Owns | None = None) -> dict[str, Any]:
        rows = self._db.execute("SELECT series, state FROM states")
        return _restore(rows, self.detector, owns or self.owns, str(self.path))

    def save(self, states: Mapping[str, Any], series: Iterable[str]) -> None:
        keep, gone = _changes(states, series, self.detector, self.owns)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO states VALUES (?, ?)", keep)
            self._db.executemany("DELETE FROM states WHERE series = ?", gone)

    def close(self) -> None:
        self._db.close()


class PostgresStates:
    """Per-series states in the PostgreSQL database of the journal, shared by replicas: the
    replica (or worker) that owns a series now finds the state its last owner saved.

    Rows are keyed by the detector's fingerprint too, so replicas running two detectors (a rolling
    upgrade) never read, or discard, each other's states.
    """

    def __init__(self, url: str, detector: Any, owns: Owns | None = None) -> None:
        import psycopg

        self.location = redacted(url)
        self.detector = detector
        self.owns = owns
        self._fingerprint = detector_fingerprint(detector)
        try:
            migrate(url)  # the table is the journal's (its migrations, engine.runtime.journal)
            self._conn = Reconnecting(url, location=self.location, what="the detector states")
        except psycopg.Error as exc:
            raise RuntimeEngineError(
                f"{self.location}: the detector states cannot be opened: {' '.join(str(exc).split())}",
                hint="check the journal's PostgreSQL is reachable, or set state_snapshot_s: null",
            ) from exc

    def load(self, owns: Owns | None = None) -> dict[str, Any]:
        rows = (
            self._conn.connection()
            .execute("SELECT series, state FROM detector_states WHERE detector = %s", (self._fingerprint,))
            .fetchall()
        )
        return _restore(rows, self.detector, owns or self.owns, self.location)

    def save(self, states: Mapping[str, Any], series: Iterable[str]) -> None:
        keep, gone = _changes(states, series, self.detector, self.owns)
        detector, db = self._fingerprint, self._conn.connection()
        with db.transaction(), db.cursor() as cur:
            cur.executemany(
                "INSERT INTO detector_states VALUES (%s, %s, %s) "
                "ON CONFLICT (detector, series) DO UPDATE SET state = excluded.state",
                [(detector, name, blob) for name, blob in keep],
            )
            cur.executemany(
                "DELETE FROM detector_states WHERE detector = %s AND series = %s",
                [(detector, name) for (name,) in gone],
            )

    def close(self) -> None:
        self._conn.close()
