"""Reading an experiment's data from the telemetry store, and fingerprinting it.

The store is opened read-only and closed before any fitting starts: DuckDB lets one writing process
lock out every reader, so nothing in the research loop (sweeps, notebooks) may hold the file longer
than one query. The fingerprint is a hash of exactly what the query returned (points and incident
windows), so two runs can prove they were judged on the same data, and a run can be reproduced.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from engine.errors import InputError
from engine.hints import selfheal_command
from engine.home import Home
from engine.tracking.spec import DataSpec

logger = logging.getLogger(__name__)

POINT_COLUMNS = ("ts", "service", "metric", "value")


@dataclass(frozen=True)
class Dataset:
    """Telemetry points (long format), incident windows, and their fingerprint."""

    points: pl.DataFrame
    incidents: pl.DataFrame
    fingerprint: str

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
    return _dataset(points, incidents)


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


def _dataset(points: pl.DataFrame, incidents: pl.DataFrame) -> Dataset:
    incidents = incidents.select("service", "kind", "start", "end").sort("service", "start")
    points = points.sort("service", "metric", "ts")
    fp = fingerprint(points, incidents)
    logger.info("loaded %d points, %d incidents (fingerprint %s)", len(points), len(incidents), fp)
    return Dataset(points=points, incidents=incidents, fingerprint=fp)


def fingerprint(points: pl.DataFrame, incidents: pl.DataFrame) -> str:
    """A stable hash of the data: timestamps, string columns by dictionary code, values as bytes.

    Hashes raw numpy buffers instead of a serialised file format so that it does not change with
    polars or pyarrow versions.
    """
    h = hashlib.sha256()
    for frame, columns in ((points, POINT_COLUMNS), (incidents, ("service", "kind", "start", "end"))):
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
