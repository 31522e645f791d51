"""The DuckDB telemetry store: the one module that owns the schema and every SQL statement.

Telemetry is kept in long format, one row per ``(ts, service, metric, labels)`` and a value;
incidents (ground truth) are windows ``(service, kind, start, end, source)``. Everything else in
selfheal reads and writes through :class:`TelemetryStore`, so a schema change happens here only.

Design choices (the issue left them open):

* **Idempotence without an index.** A row's identity is ``(service, metric, labels, ts)``; the first
  value written for a key wins. ``insert_points`` drops keys repeated inside the batch and
  anti-joins the batch against the rows already stored *in the batch's time range* (zone maps
  prune the rest). A PRIMARY KEY with ``ON CONFLICT DO NOTHING`` gives the same guarantee but
  made a 2M-row insert 2.4-4x slower here, which would miss the ingest benchmark target; it also
  cannot cover the nullable ``labels``.
* **Short connections.** DuckDB lets one process write, and a writer locks out every other process,
  readers included. A store is a context manager: the connection lives for one ``with`` block.
  When another process holds the file we raise :class:`~engine.errors.StoreLockedError` naming the
  PID and command line of the holder instead of hanging.
* **Naive UTC timestamps**, microsecond precision, as in the interface contract.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import polars as pl

from engine.errors import InputError, StoreError, StoreLockedError

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

POINT_COLUMNS: tuple[str, ...] = ("ts", "service", "metric", "value", "labels")
"""Columns of a points DataFrame, in order (``labels`` is optional on input)."""

INCIDENT_COLUMNS: tuple[str, ...] = ("service", "kind", "start", "end", "source")

POINTS_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Datetime("us"),
    "service": pl.String(),
    "metric": pl.String(),
    "value": pl.Float64(),
    "labels": pl.String(),
}

INCIDENTS_SCHEMA: dict[str, pl.DataType] = {
    "service": pl.String(),
    "kind": pl.String(),
    "start": pl.Datetime("us"),
    "end": pl.Datetime("us"),
    "source": pl.String(),
}

_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS telemetry (
        ts      TIMESTAMP NOT NULL,
        service VARCHAR   NOT NULL,
        metric  VARCHAR   NOT NULL,
        value   DOUBLE    NOT NULL,
        labels  VARCHAR,
        source  VARCHAR   NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS incidents (
        service VARCHAR   NOT NULL,
        kind    VARCHAR   NOT NULL,
        "start" TIMESTAMP NOT NULL,
        "end"   TIMESTAMP NOT NULL,
        source  VARCHAR   NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
)

# New rows of the batch: keys not yet stored. The existing side is limited to the batch's time range
# so that zone maps skip the rest of the table; labels compare with IS NOT DISTINCT FROM (NULL = NULL).
_INSERT_POINTS = """
INSERT INTO telemetry (ts, service, metric, value, labels, source)
SELECT b.ts, b.service, b.metric, b.value, b.labels, $source
FROM _batch AS b
ANTI JOIN (
    SELECT ts, service, metric, labels FROM telemetry WHERE ts BETWEEN $lo AND $hi
) AS t
ON b.ts = t.ts AND b.service = t.service AND b.metric = t.metric
   AND b.labels IS NOT DISTINCT FROM t.labels
"""

_INSERT_INCIDENTS = """
INSERT INTO incidents (service, kind, "start", "end", source)
SELECT DISTINCT b.service, b.kind, b."start", b."end", b.source
FROM _batch AS b
ANTI JOIN incidents AS t
ON b.service = t.service AND b.kind = t.kind AND b."start" = t."start" AND b."end" = t."end"
   AND b.source = t.source
"""

_HASH_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant (golden ratio) to mix column hashes

_LOCK_PID = re.compile(r"\(PID (\d+)\)")
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID")


class TelemetryStore:
    """A short-lived connection to the telemetry DuckDB file.

    Example::

        with TelemetryStore(home.telemetry_db) as store:
            store.insert_points(df, source="synth")
            recent = store.points(services=["gateway"], start=datetime(2026, 1, 1))
    """

    def __init__(self, path: Path | str, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._con: duckdb.DuckDBPyConnection | None = None

    # -- connection ---------------------------------------------------------------------------------

    def __enter__(self) -> TelemetryStore:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> TelemetryStore:
        """Connect (and create the schema when writable). Prefer ``with TelemetryStore(...)``."""
        import duckdb

        if self._con is not None:
            return self
        if self.read_only and not self.path.is_file():
            raise StoreError(
                f"telemetry store {self.path} does not exist",
                hint="load data first, e.g. `selfheal ingest FILE`, or check --home / SELFHEAL_HOME",
            )
        if not self.read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(self.path), read_only=self.read_only)
        except duckdb.ConnectionException as exc:
            mode = "read-only" if self.read_only else "writable"
            raise StoreError(
                f"cannot open telemetry store {self.path} {mode}: this process already holds it open "
                f"the other way ({exc})",
                hint="close the other TelemetryStore first (keep connections to one `with` block), "
                "or open both the same way",
            ) from exc
        except duckdb.Error as exc:
            raise _translate_open_error(self.path, exc) from exc
        if not self.read_only:
            self._create_schema()
        return self

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise StoreError(
                f"telemetry store {self.path} is not open",
                hint="use it as a context manager: `with TelemetryStore(path) as store: ...`",
            )
        return self._con

    def _create_schema(self) -> None:
        con = self.con
        for ddl in _DDL:
            con.execute(ddl)
        version = _scalar(con, "SELECT value FROM meta WHERE key = 'schema_version'")
        if version is None:
            con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        elif int(version) != SCHEMA_VERSION:
            raise StoreError(
                f"telemetry store {self.path} has schema version {version}, this selfheal expects "
                f"{SCHEMA_VERSION}",
                hint="use a fresh --home or re-ingest into a new file",
            )

    # -- writes -------------------------------------------------------------------------------------

    def insert_points(self, df: pl.DataFrame, *, source: str) -> int:
        """Insert long-format points; return how many rows were new.

        Keys ``(service, metric, labels, ts)`` already stored, or repeated in ``df``, are skipped
        (the first value wins), so loading the same data twice changes nothing.
        """
        batch = _conform_points(df)
        if batch.height == 0:
            return 0
        batch = _unique_keys(batch)
        bounds = batch.select(lo=pl.col("ts").min(), hi=pl.col("ts").max()).row(0)
        con = self.con
        con.register("_batch", batch.to_arrow())
        try:
            inserted = int(_scalar(con, _INSERT_POINTS, {"source": source, "lo": bounds[0], "hi": bounds[1]}))
        finally:
            con.unregister("_batch")
        log.debug("inserted %d of %d points from %s", inserted, batch.height, source)
        return inserted

    def insert_incidents(self, df: pl.DataFrame) -> int:
        """Insert incident windows; return how many were new (identical windows are skipped)."""
        missing = [c for c in INCIDENT_COLUMNS if c not in df.columns]
        if missing:
            raise InputError(
                f"incidents DataFrame lacks column(s) {', '.join(missing)}",
                hint=f"incidents need columns {', '.join(INCIDENT_COLUMNS)}",
            )
        if df.height == 0:
            return 0
        batch = df.select([pl.col(c).cast(t, strict=True).alias(c) for c, t in INCIDENTS_SCHEMA.items()])
        nulls = batch.height - batch.drop_nulls().height
        if nulls:
            raise InputError(
                f"{nulls} incident(s) have an empty field",
                hint=f"fill every one of {', '.join(INCIDENT_COLUMNS)}",
            )
        bad = batch.filter(pl.col("end") < pl.col("start")).height
        if bad:
            raise InputError(f"{bad} incident(s) end before they start", hint="check the start/end columns")
        con = self.con
        con.register("_batch", batch.to_arrow())
        try:
            inserted = int(_scalar(con, _INSERT_INCIDENTS))
        finally:
            con.unregister("_batch")
        return inserted

    # -- reads --------------------------------------------------------------------------------------

    def points(
        self,
        services: Sequence[str] | None = None,
        metrics: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> pl.DataFrame:
        """Points sorted by service, metric, ts; ``start`` inclusive, ``end`` exclusive."""
        where, params = _filters(
            ("service IN ?", _as_list(services)),
            ("metric IN ?", _as_list(metrics)),
            ("ts >= ?", start),
            ("ts < ?", end),
        )
        sql = f"SELECT ts, service, metric, value, labels FROM telemetry {where} ORDER BY service, metric, ts"
        return self._frame(sql, params, POINTS_SCHEMA)

    def incidents(
        self,
        services: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> pl.DataFrame:
        """Incidents that overlap ``[start, end)``, sorted by service and start."""
        where, params = _filters(
            ("service IN ?", _as_list(services)),
            ('"end" >= ?', start),
            ('"start" < ?', end),
        )
        sql = (
            f'SELECT service, kind, "start", "end", source FROM incidents {where} '
            'ORDER BY service, "start", kind'
        )
        return self._frame(sql, params, INCIDENTS_SCHEMA)

    def query(self, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
        """Run one read-only SELECT over ``telemetry`` and ``incidents`` and return a DataFrame."""
        import duckdb

        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise StoreError(f"query does not parse: {exc}", hint="write one DuckDB SELECT") from exc
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise StoreError(
                "query() runs exactly one SELECT statement",
                hint="write changes through insert_points/insert_incidents",
            )
        try:
            return _fetch(self.con, sql, params or [])
        except duckdb.Error as exc:
            raise StoreError(f"query failed: {exc}", hint="check table and column names") from exc

    def summary(self) -> dict[str, Any]:
        """Counts, time range, services and metrics of the store (for reports and the CLI)."""
        con = self.con
        n, lo, hi = con.execute("SELECT count(*), min(ts), max(ts) FROM telemetry").fetchall()[0]
        services = [r[0] for r in con.execute("SELECT DISTINCT service FROM telemetry ORDER BY 1").fetchall()]
        metrics = [r[0] for r in con.execute("SELECT DISTINCT metric FROM telemetry ORDER BY 1").fetchall()]
        series = _scalar(con, "SELECT count(*) FROM (SELECT DISTINCT service, metric, labels FROM telemetry)")
        kinds = dict(con.execute("SELECT kind, count(*) FROM incidents GROUP BY 1 ORDER BY 1").fetchall())
        return {
            "path": str(self.path),
            "points": int(n),
            "series": int(series),
            "start": lo,
            "end": hi,
            "services": services,
            "metrics": metrics,
            "incidents": int(sum(kinds.values())),
            "incident_kinds": {str(k): int(v) for k, v in kinds.items()},
        }

    def _frame(self, sql: str, params: list[Any], schema: dict[str, pl.DataType]) -> pl.DataFrame:
        df = _fetch(self.con, sql, params)
        return df.cast(schema) if df.height else pl.DataFrame(schema=schema)


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> Any:
    """First cell of a statement's result, fetching everything (DuckDB refuses new work on a
    connection whose previous result was not exhausted)."""
    rows = con.execute(sql, params).fetchall()
    return rows[0][0] if rows else None


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: Any) -> pl.DataFrame:
    """A SELECT as a Polars frame through the relation API (DuckDB 2 warns about the extra copy
    that Arrow output on an ``execute`` result makes)."""
    return con.sql(sql, params=params or None).pl()


def _as_list(values: Sequence[str] | str | None) -> list[str] | None:
    if values is None:
        return None
    return [values] if isinstance(values, str) else list(values)


def _filters(*clauses: tuple[str, Any]) -> tuple[str, list[Any]]:
    used = [(sql, value) for sql, value in clauses if value is not None]
    if not used:
        return "", []
    return "WHERE " + " AND ".join(sql for sql, _ in used), [value for _, value in used]


def _conform_points(df: pl.DataFrame) -> pl.DataFrame:
    """Check and cast a caller's points to the store's column types; refuse what the table can't hold."""
    missing = [c for c in POINT_COLUMNS[:4] if c not in df.columns]
    if missing:
        raise InputError(
            f"points DataFrame lacks column(s) {', '.join(missing)}",
            hint="points need columns ts (Datetime), service, metric, value and optionally labels",
        )
    ts = pl.col("ts")
    if isinstance(df.schema["ts"], pl.Datetime) and df.schema["ts"].time_zone is not None:  # type: ignore[union-attr]
        ts = ts.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    labels = pl.col("labels") if "labels" in df.columns else pl.lit(None, pl.String)
    try:
        batch = df.select(
            ts.cast(pl.Datetime("us")).alias("ts"),
            pl.col("service").cast(pl.String),
            pl.col("metric").cast(pl.String),
            pl.col("value").cast(pl.Float64),
            labels.cast(pl.String).alias("labels"),
        )
    except pl.exceptions.PolarsError as exc:
        raise InputError(
            f"points DataFrame has the wrong column types: {exc}",
            hint="ts must be Datetime, value numeric, service/metric/labels strings",
        ) from exc
    bad = batch.select(
        nulls=pl.any_horizontal(pl.col("ts", "service", "metric", "value").is_null()).sum(),
        non_finite=(~pl.col("value").is_finite()).sum(),
    ).row(0, named=True)
    if bad["nulls"] or bad["non_finite"]:
        raise InputError(
            f"points DataFrame has {bad['nulls']} row(s) with nulls and {bad['non_finite']} with "
            "non-finite values",
            hint="validate with engine.telemetry.readers.validate_points or drop those rows first",
        )
    return batch


def _unique_keys(batch: pl.DataFrame) -> pl.DataFrame:
    """Drop keys repeated within the batch (the first row wins), paying as little as possible when
    there are none: a strictly increasing ``ts`` proves it in one pass (single-series files); else
    distinct combined column hashes prove it; only a real (or hash-collision) repeat pays the exact
    ``unique``. The column hashes are combined arithmetically: hashing a struct costs ~2x more."""
    if batch.select((pl.col("ts").diff() > pl.duration(microseconds=0)).all()).item():
        return batch
    key = pl.col("ts").hash(1)
    for seed, name in enumerate(("service", "metric", "labels"), start=2):
        key = (key * _HASH_MIX) ^ pl.col(name).hash(seed)
    if batch.select(key.n_unique()).item() == batch.height:
        return batch
    return batch.unique(subset=["service", "metric", "labels", "ts"], keep="first", maintain_order=True)


def _translate_open_error(path: Path, exc: Exception) -> StoreError:
    """Turn DuckDB's lock error into a message naming the holder and the way out."""
    text = str(exc)
    if "lock" not in text.lower():
        return StoreError(
            f"cannot open telemetry store {path}: {text}", hint="check the path and its permissions"
        )
    match = _LOCK_PID.search(text)
    pid = int(match.group(1)) if match else None
    who = describe_process(pid) if pid is not None else None
    if who is None:
        holder = _LOCK_HOLDER.search(text)
        who = holder.group(1) if holder else "another process"
    return StoreLockedError(
        f"telemetry store {path} is locked by {who}; DuckDB allows one process at a time "
        "when one of them writes",
        hint="wait for that process to finish, or close its connection (a notebook kernel holding "
        f"the store: shut it down){f', or stop it: kill {pid}' if pid else ''}; then retry",
    )


def describe_process(pid: int) -> str:
    """``PID 123 (python -m ...)``: the holder of a lock as a person can recognise it."""
    import psutil

    try:
        proc = psutil.Process(pid)
        cmdline = " ".join(" ".join(proc.cmdline()).split()) or proc.name()
    except (psutil.Error, OSError):
        return f"PID {pid}"
    if len(cmdline) > 300:
        cmdline = cmdline[:297] + "..."
    return f"PID {pid} ({cmdline})"
