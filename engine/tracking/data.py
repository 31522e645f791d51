"""Reading an experiment's data from the telemetry store, and fingerprinting it.

Besides telemetry and incident windows (positive labels) a dataset carries the operators' word
as negative labels: the windows of alarms an operator marked false and of actions whose approval
a person rejected (tables ``alarm_labels`` and ``outcomes``, written by ``selfheal journal export
--to-store``). The evaluation counts a candidate's alarms in those windows against it.

The store is opened read-only and closed before any fitting starts: DuckDB lets one writing process
lock out every reader, so nothing in the research loop (sweeps, notebooks) may hold the file longer
than one query. The fingerprint is a hash of exactly what the query returned (points and incident
windows), so two runs can prove they were judged on the same data, and a run can be reproduced.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from engine.errors import InputError
from engine.hints import selfheal_command
from engine.home import Home
from engine.tracking.spec import DataSpec

logger = logging.getLogger(__name__)

POINT_COLUMNS = ("ts", "service", "metric", "value")


#: The windows operators said no to: an alarm marked false, an action whose approval was rejected.
_NEGATIVES = """
SELECT * FROM (
    SELECT service, window_start AS "start", window_end AS "end", 'false alarm' AS why
      FROM alarm_labels WHERE label = 'false_alarm'
    UNION ALL
    SELECT service, window_start, window_end, 'rejected' FROM outcomes WHERE outcome = 'rejected'
) WHERE "start" IS NOT NULL AND "end" IS NOT NULL AND "end" >= ? AND "start" <= ?
ORDER BY service, "start"
"""
NEGATIVES_SCHEMA = {"service": pl.Utf8, "start": pl.Datetime("us"), "end": pl.Datetime("us"), "why": pl.Utf8}


def no_negatives() -> pl.DataFrame:
    """An empty frame of negative windows (data from a synthetic source or a store never exported to)."""
    return pl.DataFrame(schema=NEGATIVES_SCHEMA)


@dataclass(frozen=True)
class Dataset:
    """Telemetry points (long format), incident windows, operators' negative windows, and their
    fingerprint."""

    points: pl.DataFrame
    incidents: pl.DataFrame
    fingerprint: str
    negatives: pl.DataFrame = field(default_factory=no_negatives)

    @property
    def start(self) -> datetime:
        return self.points["ts"].min()  # type: ignore[return-value]

    @property
    def end(self) -> datetime:
        return self.points["ts"].max()  # type: ignore[return-value]

    @property
    def services(self) -> list[str]:
        return sorted(self.points["service"].unique().to_list())


def load_dataset(data: DataSpec, store_path: str | Path, *, metrics: list[str] | None = None) -> Dataset:
    """Run the spec's data selection against the store and return the result with its fingerprint.

    ``metrics`` (the feature spec's inputs) narrows the points when the spec names none.
    """
    from engine.telemetry.store import TelemetryStore

    wanted_metrics = data.metrics or metrics
    if data.synth is not None:
        return _synthetic(data, wanted_metrics)
    path = Path(store_path)
    if not path.is_file():
        raise InputError(
            f"telemetry store {path} does not exist",
            hint=f"create data first: {_synth(path)}, or ingest your files into that home",
        )
    with TelemetryStore(path, read_only=True) as store:
        if data.query:
            points = store.query(data.query)
            missing = [c for c in POINT_COLUMNS if c not in points.columns]
            if missing:
                raise InputError(
                    f"data.query returned no column(s) {', '.join(missing)}",
                    hint="SELECT ts, service, metric, value FROM telemetry WHERE ...",
                )
            points = points.select(POINT_COLUMNS)
            if data.services:
                points = points.filter(pl.col("service").is_in(data.services))
            if wanted_metrics:
                points = points.filter(pl.col("metric").is_in(wanted_metrics))
            start = points["ts"].min() if len(points) else None
            end = points["ts"].max() + timedelta(microseconds=1) if len(points) else None
        else:
            start, end = data.start, data.end
            if data.last_days is not None:
                latest = store.query("SELECT max(ts) AS ts FROM telemetry")["ts"][0]
                if latest is None:
                    raise InputError(f"telemetry store {path} is empty", hint=_synth(path))
                end = latest + timedelta(microseconds=1)
                start = end - timedelta(days=data.last_days)
            points = store.points(services=data.services, metrics=wanted_metrics, start=start, end=end)
            points = points.select(POINT_COLUMNS)
        incidents = store.incidents(services=data.services, start=start, end=end) if len(points) else None
        negatives = (
            _negatives(store, data.services, points["ts"].min(), points["ts"].max())
            if len(points)
            else no_negatives()
        )
    if not len(points):
        raise InputError(
            f"the spec's data selection matched no telemetry in {path}",
            hint="check data.services / data.metrics / the time range against the store "
            "(`selfheal ingest` and `selfheal synth` print what it holds)",
        )
    if incidents is None or not len(incidents):
        incidents = pl.DataFrame(
            schema={"service": pl.Utf8, "kind": pl.Utf8, "start": pl.Datetime("us"), "end": pl.Datetime("us")}
        )
    return _dataset(points, incidents, negatives)


def _negatives(store: Any, services: list[str] | None, start: Any, end: Any) -> pl.DataFrame:
    """The operators' negative windows overlapping the data's [start, end] (none before the first
    export)."""
    tables = {r[0] for r in store.query("SELECT table_name FROM information_schema.tables").rows()}
    if not {"alarm_labels", "outcomes"} <= tables:
        return no_negatives()
    found = store.query(_NEGATIVES, [start, end]).cast(NEGATIVES_SCHEMA)
    return found.filter(pl.col("service").is_in(services)) if services else found


def _synthetic(data: DataSpec, metrics: list[str] | None) -> Dataset:
    """The spec's ``synth`` source: the synthetic platform generated in memory (no store)."""
    from engine.telemetry.synth import generate, load_config

    src = data.synth
    assert src is not None
    gen = generate(load_config(), days=src.days, seed=src.seed, start=src.start)
    points = gen.points.select(POINT_COLUMNS)
    incidents = gen.incidents
    if data.services:
        points = points.filter(pl.col("service").is_in(data.services))
        incidents = incidents.filter(pl.col("service").is_in(data.services))
    if metrics:
        points = points.filter(pl.col("metric").is_in(metrics))
    return _dataset(points, incidents)


def _dataset(points: pl.DataFrame, incidents: pl.DataFrame, negatives: pl.DataFrame | None = None) -> Dataset:
    incidents = incidents.select("service", "kind", "start", "end").sort("service", "start")
    points = points.sort("service", "metric", "ts")
    negatives = no_negatives() if negatives is None else negatives
    fp = fingerprint(points, incidents, negatives)
    logger.info(
        "loaded %d points, %d incidents, %d negative windows (fingerprint %s)",
        len(points),
        len(incidents),
        len(negatives),
        fp,
    )
    return Dataset(points=points, incidents=incidents, fingerprint=fp, negatives=negatives)


def fingerprint(points: pl.DataFrame, incidents: pl.DataFrame, negatives: pl.DataFrame | None = None) -> str:
    """A stable hash of the data: timestamps, string columns by dictionary code, values as bytes.

    Hashes raw numpy buffers instead of a serialised file format so that it does not change with
    polars or pyarrow versions. Negative windows count only when there are some, so data without
    operator labels keeps the fingerprint it always had.
    """
    h = hashlib.sha256()
    parts = [(points, POINT_COLUMNS), (incidents, ("service", "kind", "start", "end"))]
    if negatives is not None and len(negatives):
        parts.append((negatives, ("service", "start", "end", "why")))
    for frame, columns in parts:
        h.update(f"{len(frame)}|{','.join(columns)}".encode())
        for name in columns:
            col = frame[name]
            if col.dtype == pl.Utf8 or col.dtype == pl.String:
                uniques = sorted(col.unique().drop_nulls().to_list())
                h.update("\x1f".join(uniques).encode())
                codes = col.replace_strict(
                    uniques, list(range(len(uniques))), default=-1, return_dtype=pl.Int32
                )
                h.update(codes.to_numpy().tobytes())
            elif col.dtype.is_temporal():
                h.update(col.cast(pl.Datetime("us")).dt.epoch("us").fill_null(-1).to_numpy().tobytes())
            else:
                h.update(np.ascontiguousarray(col.cast(pl.Float64).to_numpy()).tobytes())
    return h.hexdigest()[:16]


def _synth(store_path: Path) -> str:
    """The command that fills the home holding ``store_path`` with a week of synthetic data."""
    return selfheal_command(Home(store_path.parent), "synth", "--days", "7")
