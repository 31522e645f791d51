"""The journal's database: SQLite (a file, one engine) or PostgreSQL (a server several replicas
share), chosen by the journal's location (``journal: postgresql://user@host:5432/db``).

Why a seam this thin: the journal (``engine.runtime.journal``) is one set of statements, written
once in SQLite's dialect and tested there; PostgreSQL runs the same statements translated here
(placeholders, ``INSERT OR IGNORE``, SQLite's JSON and index hints), so the two backends cannot
drift apart in what they record. The parts that differ by nature live here too: opening (WAL and
``synchronous=FULL`` for SQLite), the one-writer lock (a file lock; a session advisory lock on
PostgreSQL), the decision lock that makes the replicas' safeguard checks atomic (SQLite's write
lock; a transaction-scoped advisory lock on PostgreSQL), and the schema's versioned migrations.

Migrations: ``MIGRATIONS`` is an ordered list of ``Migration`` (version, DDL); a database records
the version it is at (``meta.schema_version``) and opening applies the missing ones in order, in
one transaction (on PostgreSQL under an advisory lock, so replicas starting together migrate
once). A database at a version newer than this code is refused: an older engine must not write
rows a newer schema reads differently. A migration marked ``shared`` holds what only replicas
sharing a PostgreSQL journal use (partition leases, detector states), in PostgreSQL's dialect: a
SQLite journal passes its version without creating its tables.

Exactly-once dispatch rests on the ``executions.idempotency_key`` unique index in both backends:
the execution row is inserted before the action is called, and of two engines racing the same
key, one insert wins and the other gets no row (``INSERT ... ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from engine.errors import RuntimeEngineError

__all__ = ["Database", "Migration", "is_url", "open_database"]

MIN_SQLITE = (3, 38, 0)  # UPDATE ... FROM (multi-row updates), JSON functions built in
URL_SCHEMES = ("postgresql://", "postgres://")
WRITER_LOCK_GRACE_S = 3.0
"""How long a PostgreSQL journal's new writer waits for the one-writer lock before it says the
journal is in use: the lock of a writer that has just closed is released when the server has ended
its session, a moment after the client returned (CI saw a journal reopened at once refused)."""


class Migration(NamedTuple):
    """One step of the journal's schema: applied once, in version order (module docstring)."""

    version: int
    ddl: str  # SQLite's dialect, translated for PostgreSQL; PostgreSQL's own when ``shared``
    shared: bool = False  # only replicas on PostgreSQL use these tables: SQLite skips the DDL


def is_url(location: str | Path) -> bool:
    """Whether a journal location names a PostgreSQL server (else it is a SQLite file)."""
    return str(location).startswith(URL_SCHEMES)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Database(Protocol):
    """What the journal calls: ``execute`` one statement in SQLite's dialect (``BEGIN IMMEDIATE``,
    ``COMMIT`` and ``ROLLBACK`` included); rows read by index and by column name."""

    location: str

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Cursor: ...
    def lock_decisions(self) -> None: ...
    def close(self) -> None: ...


def open_database(
    location: str | Path, migrations: Sequence[Migration], *, read_only: bool, exclusive: bool = True
) -> Database:
    """The journal's database at ``location``, migrated (unless ``read_only``).

    ``exclusive`` takes the one-writer lock: a second engine would recover (and so rewrite) the
    live one's in-flight executions and approvals.
    """
    if is_url(location):
        return PostgresDatabase(str(location), migrations, read_only=read_only, exclusive=exclusive)
    return SqliteDatabase(Path(location), migrations, read_only=read_only, exclusive=exclusive)


def _check_version(location: str, current: int, migrations: Sequence[Migration]) -> None:
    latest = migrations[-1].version
    if current > latest:
        raise RuntimeEngineError(
            f"{location}: the journal's schema is at version {current}, newer than this engine's ({latest})",
            hint="run the selfheal version that wrote it, or give this engine another journal",
        )


# ====================================================================== SQLite
def _exclusive_lock(lock_path: Path) -> int:
    """One writer per journal file. The kernel frees the lock when its holder dies (kill -9
    included), so a stale lock file never blocks a restart."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RuntimeEngineError(
            f"{lock_path.with_suffix('')}: the journal is in use by another engine (it holds {lock_path})",
            hint="stop the running `selfheal run` first (or give this one another journal_path); "
            "the lock is released when that process exits",
        ) from None
    return fd


class SqliteDatabase:
    """A SQLite file in WAL mode with ``synchronous=FULL``: a committed row survives ``kill -9``
    and power loss, and WAL lets ``selfheal journal`` (another process) read while the engine writes."""

    def __init__(
        self, path: Path, migrations: Sequence[Migration], *, read_only: bool, exclusive: bool
    ) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeEngineError(
                f"SQLite {sqlite3.sqlite_version} is too old for the journal (needs UPDATE ... FROM, JSON)",
                hint=f"use a Python linked against SQLite >= {'.'.join(map(str, MIN_SQLITE))}",
            )
        self.location = str(path)
        self._lock_fd: int | None = None
        try:
            if read_only:
                if not path.is_file():
                    raise RuntimeEngineError(
                        f"{path}: no journal here",
                        hint="pass the journal the engine writes (see `journal_path` in its config) "
                        "or start the engine once",
                    )
                self.connection = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=10
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                if exclusive:
                    self._lock_fd = _exclusive_lock(path.with_name(path.name + ".lock"))
                self.connection = sqlite3.connect(
                    path, check_same_thread=False, timeout=30, isolation_level=None
                )
                self.connection.execute("PRAGMA journal_mode=WAL")
                self.connection.execute("PRAGMA synchronous=FULL")
                self._migrate(migrations)
        except sqlite3.DatabaseError as exc:
            self._unlock()
            raise RuntimeEngineError(
                f"{path}: cannot open the journal ({exc})",
                hint="check the path is a selfheal journal and the folder is writable",
            ) from exc
        self.connection.row_factory = sqlite3.Row

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        db = self.connection
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            current = int(row[0]) if row else 0
            _check_version(self.location, current, migrations)
            for step in migrations:
                if step.version > current:
                    for statement in [] if step.shared else _statements(step.ddl):
                        db.execute(statement)
                    db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(step.version),)
                    )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        return self.connection.execute(sql, params)

    def lock_decisions(self) -> None:
        """Nothing to take: ``BEGIN IMMEDIATE`` already holds the file's one write lock, so no other
        connection commits between the safeguard counts this transaction reads and its own rows."""

    def close(self) -> None:
        self.connection.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None


def _statements(ddl: str) -> list[str]:
    return [s.strip() for s in ddl.split(";") if s.strip()]


# ====================================================================== PostgreSQL
class _Row:
    """A row read by index and by column name, like ``sqlite3.Row`` (the journal uses both)."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: tuple[Any, ...]) -> None:
        self._index, self._values = index, values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._index[key]]

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    names = [c.name for c in cursor.description or ()]
    keep = [i for i, n in enumerate(names) if n != "rowid"]  # the insertion order SQLite gives free
    index = {names[i]: j for j, i in enumerate(keep)}
    if len(keep) == len(names):
        return lambda values: _Row(index, values)
    return lambda values: _Row(index, tuple(values[i] for i in keep))


class PostgresDatabase:
    """A PostgreSQL database the replicas share (psycopg 3, one connection in autocommit mode:
    the journal opens its transactions with ``BEGIN``).

    The connection comes back after it breaks (``engine.runtime.pgconn``): the statement that
    meets the break fails, and the next statement outside a transaction reconnects (taking the
    one-writer lock again when ``exclusive``). Inside a transaction nothing reconnects; its
    ``ROLLBACK`` on a broken connection is a no-op, the server rolled back with the session.
    """

    def __init__(
        self, url: str, migrations: Sequence[Migration], *, read_only: bool, exclusive: bool
    ) -> None:
        import psycopg

        from engine.runtime.pgconn import Reconnecting

        self.location = redacted(url)
        self._key = int.from_bytes(hashlib.sha256(b"selfheal-journal").digest()[:8], "big", signed=True)
        self._in_tx = False
        setup = self._read_only if read_only else self._one_writer if exclusive else None
        try:
            self._conn = Reconnecting(
                url,
                location=self.location,
                what="the journal",
                setup=setup,
                row_factory=_row_factory,
                connect_timeout=10,
            )
        except psycopg.Error as exc:
            raise RuntimeEngineError(
                f"{self.location}: cannot connect to the journal's PostgreSQL ({' '.join(str(exc).split())})",
                hint="check the URL (postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE) and that the "
                "server accepts connections from here",
            ) from exc
        if not read_only:
            try:
                self._migrate(migrations)
            except BaseException:
                self._conn.close()
                raise

    @staticmethod
    def _read_only(db: Any) -> None:
        db.execute("SET default_transaction_read_only = on")

    def _one_writer(self, db: Any) -> None:
        deadline = time.monotonic() + WRITER_LOCK_GRACE_S
        while not db.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()[0]:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise RuntimeEngineError(
                f"{self.location}: the journal is in use by another engine",
                hint="stop the running `selfheal run` first (or give this one another database); "
                "the lock is released when that engine's connection closes",
            )

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        db = self._conn.current
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (self._key + 1,))  # one migrator at a time
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            current = int(row[0]) if row else 0
            _check_version(self.location, current, migrations)
            for step in migrations:
                if step.version > current:
                    for statement in _statements(step.ddl if step.shared else postgres_ddl(step.ddl)):
                        db.execute(statement)
                    db.execute(
                        "INSERT INTO meta VALUES ('schema_version', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (str(step.version),),
                    )

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        statement = postgres_sql(sql)
        if statement in ("COMMIT", "ROLLBACK"):
            self._in_tx = False
            if statement == "ROLLBACK" and self._conn.current.closed:
                return None  # the transaction ended with its session
            return self._conn.current.execute(statement)
        db = self._conn.current if self._in_tx else self._conn.connection()
        out = db.execute(statement, params)
        self._in_tx = self._in_tx or statement == "BEGIN"
        return out

    def lock_decisions(self) -> None:
        """Wait for the replicas' one decision lock, held until this transaction ends.

        Why: a replica's ``BEGIN`` locks nothing, so two replicas could each read the global
        safeguard counts (actions in the last hour, in flight) before either commits, and each take
        the last free slot. Under this transaction-scoped advisory lock, whoever decides reads the
        counts after the previous decider's commit (READ COMMITTED reads anew at each statement).
        """
        self._conn.current.execute("SELECT pg_advisory_xact_lock(%s)", (self._key + 2,))

    def close(self) -> None:
        self._conn.close()  # the advisory lock goes with the session


def redacted(url: str) -> str:
    """The URL without its password, wherever it is written: ``user:PASSWORD@`` (an empty user
    too, Redis' ``redis://:PASSWORD@host``) and libpq's ``?password=`` parameter. What logs,
    errors, /metrics, the console and exported rows show of a server's URL."""
    url = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def postgres_ddl(ddl: str) -> str:
    """SQLite DDL as PostgreSQL's: doubles for REAL (PostgreSQL's REAL is 4 bytes: epoch seconds
    would lose their minutes), and each table gets the ``rowid`` SQLite gives free."""
    ddl = re.sub(r"\bREAL\b", "DOUBLE PRECISION", ddl)
    return re.sub(
        r"(CREATE TABLE IF NOT EXISTS \w+ \()(.*?)\n?\);",
        lambda m: f"{m[1]}{m[2]}, rowid BIGINT GENERATED BY DEFAULT AS IDENTITY);",
        ddl,
        flags=re.DOTALL,
    )


@functools.lru_cache(maxsize=2048)
def postgres_sql(sql: str) -> str:
    """One of the journal's statements (SQLite's dialect) in PostgreSQL's."""
    if sql == "BEGIN IMMEDIATE":
        return "BEGIN"
    out = sql.replace("%", "%%")
    out = re.sub(r"\s*INDEXED BY \w+", "", out)
    out = re.sub(r"json_extract\((\w+), '\$\.(\w+)'\) = 0", r"(\1::jsonb->>'\2')::boolean IS FALSE", out)
    out = re.sub(r"\bjson_array\(", "json_build_array(", out)
    out = _rewrite_calls(out, "json_group_array", "coalesce(json_agg({})::text, '[]')")
    out = _alias_subqueries(out)
    if out.startswith("INSERT OR IGNORE INTO"):
        out = "INSERT INTO" + out[len("INSERT OR IGNORE INTO") :] + " ON CONFLICT DO NOTHING"
    out = re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", out)
    out = out.replace("?", "%s")
    if "json_extract" in out or "OR IGNORE" in out or "OR REPLACE" in out:
        raise RuntimeEngineError(f"the journal's statement has no PostgreSQL translation: {sql[:200]}")
    return out


def _matching(text: str, open_at: int) -> int:
    """The index of the parenthesis closing the one at ``open_at``."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced parentheses: {text[:200]}")


def _rewrite_calls(sql: str, name: str, template: str) -> str:
    """Every call ``name(args)`` (nested ones included) as ``template`` around its arguments."""
    start = sql.find(name + "(")
    while start >= 0:
        open_at = start + len(name)
        close = _matching(sql, open_at)
        sql = sql[:start] + template.format(sql[open_at + 1 : close]) + sql[close + 1 :]
        start = sql.find(name + "(")
    return sql


_NOT_ALIASES = {"WHERE", "GROUP", "ORDER", "LIMIT", "JOIN", "LEFT", "INNER", "UNION", "ON", "HAVING"}


def _alias_subqueries(sql: str) -> str:
    """PostgreSQL before 16 needs a name for every subquery in FROM; SQLite needs none."""
    at = []
    for m in re.finditer(r"\bFROM \(", sql):
        close = _matching(sql, m.end() - 1)
        name = re.match(r"\s*(?:AS\s+)?([A-Za-z_]\w*)", sql[close + 1 :])
        if name is None or name[1].upper() in _NOT_ALIASES:
            at.append(close + 1)
    for n, i in enumerate(sorted(at, reverse=True)):
        sql = f"{sql[:i]} AS _q{n}{sql[i:]}"
    return sql
