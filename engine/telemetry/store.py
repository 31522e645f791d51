"""The DuckDB telemetry store: the one module that owns the schema and every SQL statement.

Telemetry is kept in long format, one row per ``(ts, service, metric, labels)`` and a value;
incidents (ground truth) are windows ``(service, kind, start, end, source)``. Everything else in
selfheal reads and writes through :class:`TelemetryStore`, so a schema change happens here only.

Design choices (the issue left them open):

* **Idempotence without an index.** A row's identity is ``(service, metric, labels, ts)``; the first
  value written for a key wins. ``write_points`` drops keys repeated inside the batch, counts the
  batch's keys already stored *in the batch's time range* (zone maps prune the rest), then inserts
  the whole batch when none is (a first load pays no anti-join), anti-joins when some are, and
  writes nothing when all are. A PRIMARY KEY with ``ON CONFLICT DO NOTHING`` gives the
  same guarantee but made a 2M-row insert 2.4-4x slower here, which would miss the ingest
  benchmark target; it also cannot cover the nullable ``labels``.
* **Duplicates versus conflicts.** A repeated key with the same value is a harmless duplicate; with
  another value it is a *conflict*: the kept value stays, and the caller gets every conflicting
  row with both values so that it can be shown (``selfheal ingest`` quarantines them). The count
  of matches tells them apart inside DuckDB; rows are fetched only when some conflict.
* **One form of labels.** ``labels`` is a JSON object stored with sorted keys and compact
  separators (``canonical_labels``), ``{}`` as NULL, whoever writes it, so that one series
  written by a JSON-lines file and by a Prometheus scrape is one series.
* **Short connections.** DuckDB lets one process write, and a writer locks out every other process,
  readers included. A store is a context manager: the connection lives for one ``with`` block.
  When another process holds the file we raise :class:`~engine.errors.StoreLockedError` naming the
  PID and command line of the holder instead of hanging.
* **Naive UTC timestamps**, microsecond precision, as in the interface contract.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
    # the engine's journal as evidence (engine.runtime.outcomes): additive, no schema version bump
    """CREATE TABLE IF NOT EXISTS outcomes (
        decision_id VARCHAR PRIMARY KEY, event_id VARCHAR, decided TIMESTAMP, service VARCHAR,
        target VARCHAR, policy VARCHAR, policy_version VARCHAR, rule VARCHAR, action VARCHAR,
        risk VARCHAR, status VARCHAR, outcome VARCHAR, approval VARCHAR, approver VARCHAR,
        verification VARCHAR, time_to_recover_s DOUBLE, event_score DOUBLE, detector VARCHAR,
        detector_version VARCHAR, bundle_version VARCHAR, window_start TIMESTAMP,
        window_end TIMESTAMP, journal VARCHAR
    )""",
    """CREATE TABLE IF NOT EXISTS alarm_labels (
        event_id VARCHAR PRIMARY KEY, ts TIMESTAMP, service VARCHAR, detector VARCHAR,
        detector_version VARCHAR, bundle_version VARCHAR, score DOUBLE, label VARCHAR,
        actor VARCHAR, reason VARCHAR, labeled TIMESTAMP, window_start TIMESTAMP,
        window_end TIMESTAMP, journal VARCHAR
    )""",
    # each outcome with the telemetry of its service over the window that triggered it
    """CREATE VIEW IF NOT EXISTS outcome_telemetry AS
        SELECT o.decision_id, o.policy, o.rule, o.outcome, o.detector_version, t.ts, t.service,
               t.metric, t.value, t.labels
        FROM outcomes o JOIN telemetry t
          ON t.service = o.service AND t.ts >= o.window_start AND t.ts <= o.window_end""",
)

# The batch joined with the rows already stored under its keys. The stored side is limited to the
# batch's time range so that zone maps skip the rest of the table; labels compare with
# IS NOT DISTINCT FROM (NULL = NULL). Counting runs inside DuckDB: a re-ingest of millions of
# duplicates never materialises the matches; rows are fetched only for conflicts.
_MATCHES = """
FROM _batch AS b
JOIN (
    SELECT ts, service, metric, labels, value FROM telemetry WHERE ts BETWEEN $lo AND $hi
) AS t
ON b.ts = t.ts AND b.service = t.service AND b.metric = t.metric
   AND b.labels IS NOT DISTINCT FROM t.labels
"""
_COUNT_MATCHES = f"SELECT count(*), count(*) FILTER (WHERE b.value <> t.value) {_MATCHES}"
_STORED_CONFLICTS = f"SELECT b.__row AS __row, t.value AS stored {_MATCHES} WHERE b.value <> t.value"
_STORED_FIRSTS = (
    f"SELECT b.__row AS __row, t.value AS stored {_MATCHES} WHERE b.__row IN (SELECT __first FROM _firsts)"
)

_INSERT_ALL = """
INSERT INTO telemetry (ts, service, metric, value, labels, source)
SELECT ts, service, metric, value, labels, $source FROM _batch
"""

_INSERT_NEW = """
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
_KEY: tuple[str, ...] = ("service", "metric", "labels", "ts")

CONFLICTS_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64(),
    "ts": pl.Datetime("us"),
    "service": pl.String(),
    "metric": pl.String(),
    "labels": pl.String(),
    "value": pl.Float64(),
    "stored": pl.Float64(),
}
"""A conflict: ``row`` is the position in the caller's frame, ``value`` its value, ``stored`` the
value kept for that key (already in the store, or written by an earlier row of the same frame)."""

_LOCK_PID = re.compile(r"\(PID (\d+)\)")
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.+?) \(PID")


@dataclass(frozen=True)
class PointsWrite:
    """What ``write_points`` did with a frame: every valid row is inserted, a duplicate (same key,
    same value as the one kept) or a conflict (same key, another value; the kept one stays)."""

    inserted: int
    duplicates: int
    conflicts: pl.DataFrame  # CONFLICTS_SCHEMA


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
            try:
                self._create_schema()
            except BaseException:
                self.close()  # else the connection, and the file lock with it, outlives the error
                raise
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

    @contextmanager
    def transaction(self) -> Iterator[TelemetryStore]:
        """Everything written inside the block is stored, or (on any exception) nothing is, so an
        input whose points load but whose incidents fail leaves no half of itself behind."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            yield self
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

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
        """Insert long-format points; return how many rows were new (see ``write_points``)."""
        return self.write_points(df, source=source).inserted

    def write_points(self, df: pl.DataFrame, *, source: str) -> PointsWrite:
        """Insert long-format points whose key ``(service, metric, labels, ts)`` is new.

        A key already stored, or repeated in ``df``, keeps its first value, so loading the same
        data twice changes nothing. Such rows are counted as duplicates when their value equals
        the kept one and returned as conflicts (with both values) when it does not.
        """
        batch = _conform_points(df)
        if batch.height == 0:
            return PointsWrite(0, 0, pl.DataFrame(schema=CONFLICTS_SCHEMA))
        batch = batch.with_row_index("__row")
        batch, repeats = _split_repeats(batch)
        bounds = batch.select(lo=pl.col("ts").min(), hi=pl.col("ts").max()).row(0)
        span = {"lo": bounds[0], "hi": bounds[1]}
        con = self.con
        con.register("_batch", batch.to_arrow())
        try:
            matched, differing = con.execute(_COUNT_MATCHES, span).fetchall()[0]
            conflicts = _fetch(con, _STORED_CONFLICTS, span) if differing else None
            firsts = self._stored_firsts(repeats, span) if matched and repeats.height else None
            if matched == 0:  # nothing of it is stored yet (a first load): no anti-join to pay
                inserted = int(_scalar(con, _INSERT_ALL, {"source": source}))
            elif matched < batch.height:
                inserted = int(_scalar(con, _INSERT_NEW, {"source": source, **span}))
            else:
                inserted = 0
        finally:
            con.unregister("_batch")
        result = _classify(batch, repeats, matched - differing, conflicts, firsts, inserted)
        log.debug(
            "from %s: %d inserted, %d duplicates, %d conflicts",
            source,
            result.inserted,
            result.duplicates,
            result.conflicts.height,
        )
        return result

    def _stored_firsts(self, repeats: pl.DataFrame, span: dict[str, Any]) -> pl.DataFrame:
        """Stored values of the rows that keys repeated in the batch first appear on."""
        con = self.con
        con.register("_firsts", repeats.select(pl.col("__first").unique()).to_arrow())
        try:
            return _fetch(con, _STORED_FIRSTS, span)
        finally:
            con.unregister("_firsts")

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

    def upsert_outcomes(self, outcomes: pl.DataFrame, labels: pl.DataFrame) -> None:
        """Write decision outcomes and alarm labels exported from a journal, replacing rows by id
        (an export repeated after decisions settled updates them)."""
        con = self.con
        for table, frame in (("outcomes", outcomes), ("alarm_labels", labels)):
            if frame.height == 0:
                continue
            con.register("_batch", frame.to_arrow())
            try:
                con.execute(f"INSERT OR REPLACE INTO {table} BY NAME SELECT * FROM _batch")
            finally:
                con.unregister("_batch")

    def outcomes(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(outcomes, alarm_labels) as exported by ``selfheal journal export --to-store``."""
        return (
            _fetch(self.con, "SELECT * FROM outcomes ORDER BY decided, decision_id", []),
            _fetch(self.con, "SELECT * FROM alarm_labels ORDER BY ts, event_id", []),
        )

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
    if batch["labels"].null_count() < batch.height:
        labels, invalid = normalize_labels(batch["labels"])
        if invalid.any():
            example = batch["labels"].filter(invalid)[0]
            raise InputError(
                f"points DataFrame has {invalid.sum()} row(s) whose labels are not a JSON object "
                f"(e.g. {example!r})",
                hint='write labels as a JSON object of strings, e.g. {"pod":"p1"}, or leave them null',
            )
        batch = batch.with_columns(labels=labels)
    return batch


def _split_repeats(batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The batch without keys repeated inside it (the first row wins), and the repeats, each with
    the ``__row`` of the row it repeats (``__first``).

    Pays as little as possible when there are none: a strictly increasing ``ts`` proves it in one
    pass (single-series files); else distinct combined column hashes prove it; only a real (or
    hash-collision) repeat pays the exact grouping. The column hashes are combined arithmetically:
    hashing a struct costs ~2x more.
    """
    none = batch.clear().with_columns(__first=pl.lit(None, pl.UInt32))
    if batch.select((pl.col("ts").diff() > pl.duration(microseconds=0)).all()).item():
        return batch, none
    key = pl.col("ts").hash(1)
    for seed, name in enumerate(("service", "metric", "labels"), start=2):
        key = (key * _HASH_MIX) ^ pl.col(name).hash(seed)
    if batch.select(key.n_unique()).item() == batch.height:
        return batch, none
    marked = batch.with_columns(__first=pl.col("__row").first().over(_KEY))
    is_first = pl.col("__row") == pl.col("__first")
    return marked.filter(is_first).drop("__first"), marked.filter(~is_first)


def _classify(
    batch: pl.DataFrame,
    repeats: pl.DataFrame,
    stored_duplicates: int,
    stored_conflicts: pl.DataFrame | None,
    stored_firsts: pl.DataFrame | None,
    inserted: int,
) -> PointsWrite:
    """Duplicates and conflicts of one write. Rows of the batch were compared with the store in
    DuckDB (a count, plus ``__row, stored`` of the conflicting ones); a repeat is compared here with
    the value kept for its key: the stored one (``stored_firsts``), else the batch's first row."""
    differs = pl.col("value") != pl.col("stored")
    duplicates = stored_duplicates
    found: list[pl.DataFrame] = []
    if stored_conflicts is not None:
        found.append(batch.join(stored_conflicts, on="__row"))
    if repeats.height:
        kept = batch.select("__row", kept=pl.col("value"))
        if stored_firsts is not None:
            kept = kept.join(stored_firsts, on="__row", how="left").select(
                "__row", kept=pl.coalesce("stored", "kept")
            )
        against = repeats.join(kept.rename({"__row": "__first", "kept": "stored"}), on="__first")
        clashes = against.filter(differs)
        duplicates += against.height - clashes.height
        found.append(clashes.drop("__first"))
    if not found:
        return PointsWrite(inserted, duplicates, pl.DataFrame(schema=CONFLICTS_SCHEMA))
    conflicts = (
        pl.concat([f.select(pl.col("__row").alias("row"), *POINT_COLUMNS, "stored") for f in found])
        .sort("row")
        .cast(CONFLICTS_SCHEMA)  # type: ignore[arg-type]
    )
    return PointsWrite(inserted, duplicates, conflicts)


def canonical_labels(labels: Mapping[str, Any]) -> str | None:
    """The one stored form of a label set: JSON with sorted keys and compact separators; an empty
    set is NULL, like a series written without labels."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":")) if labels else None


def normalize_labels(labels: pl.Series) -> tuple[pl.Series, pl.Series]:
    """``labels`` JSON text in its canonical form (blank text and ``{}`` become null), and a mask of
    the values that are not a JSON object (left as they were). Each distinct text is parsed once:
    a file has few label sets however many rows carry them, so the Python work stays small."""
    texts = labels.drop_nulls().unique()
    mapping: dict[str, str | None] = {}
    bad: list[str] = []
    for text in texts:
        try:
            parsed = json.loads(text) if text.strip() else {}  # blank text: no labels
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            mapping[text] = canonical_labels(parsed)
        else:
            bad.append(text)
    invalid = (
        labels.is_in(pl.Series(bad, dtype=pl.String).implode()).fill_null(False)
        if bad
        else pl.repeat(False, labels.len(), eager=True)
    )
    changed = {k: v for k, v in mapping.items() if k != v}
    if changed:
        labels = labels.replace(
            pl.Series(list(changed), dtype=pl.String), pl.Series(list(changed.values()), dtype=pl.String)
        )
    return labels, invalid


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
