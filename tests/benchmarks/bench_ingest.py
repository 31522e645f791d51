"""Ingest benchmark: Parquet → DuckDB rows/s through ``selfheal ingest``'s path, against DuckDB's own
``INSERT INTO telemetry SELECT ... FROM read_parquet(...)`` into the same schema, in the same run.

Both sides start from a fresh store file and include opening and closing it; ours also validates
every row (timestamps, finiteness, missing fields), checks the batch for duplicate keys and
anti-joins against stored rows, which the baseline does not. Target: ratio >= 0.8. A second row
times re-ingesting the same file into the filled store (every row a duplicate, nothing written).

Run: .venv/bin/python tests/benchmarks/run.py ingest    (ROWS env var overrides 10M)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from harness import Row

from engine.telemetry.ingest import ingest
from engine.telemetry.store import TelemetryStore

ROWS = int(os.environ.get("ROWS", "10_000_000"))
SERVICES = ("gateway", "inference-a", "inference-b", "vector-db", "feature-store", "ingestion")
METRICS = ("request_rate", "latency_p50_ms", "latency_p99_ms", "ttft_ms", "cpu_util", "memory_util")


def _make_parquet(path: Path, rows: int) -> None:
    """Synthetic long-format telemetry: 36 series at 10 s, interleaved by time like a scrape log."""
    series = len(SERVICES) * len(METRICS)
    per = rows // series + 1
    rng = np.random.default_rng(0)
    ts = np.datetime64("2026-01-01T00:00:00", "us") + np.arange(per).repeat(series) * np.timedelta64(10, "s")
    idx = np.tile(np.arange(series), per)
    df = pl.DataFrame(
        {
            "ts": ts[:rows],
            "service": np.array(SERVICES)[idx[:rows] % len(SERVICES)],
            "metric": np.array(METRICS)[idx[:rows] // len(SERVICES)],
            "value": rng.normal(100.0, 10.0, rows),
        }
    )
    df.write_parquet(path)


def _fresh(db: Path) -> None:
    for p in (db, db.with_name(db.name + ".wal")):
        p.unlink(missing_ok=True)


def _baseline(parquet: Path, db: Path) -> float:
    _fresh(db)
    with TelemetryStore(db):  # same schema, created outside the timing
        pass
    import duckdb

    start = time.perf_counter()
    con = duckdb.connect(str(db))
    con.execute(
        "INSERT INTO telemetry SELECT ts, service, metric, value, NULL, 'baseline' "
        f"FROM read_parquet('{parquet}')"
    ).fetchall()
    con.close()
    return time.perf_counter() - start


def _ours(parquet: Path, db: Path, quarantine: Path) -> tuple[float, float]:
    """Seconds for the first ingest into a fresh store and for re-ingesting the same file."""
    _fresh(db)
    with TelemetryStore(db):
        pass
    start = time.perf_counter()
    report = ingest([parquet], db=db, quarantine_dir=quarantine, fmt="parquet")
    first = time.perf_counter() - start
    assert report.inserted == ROWS, report.lines()
    start = time.perf_counter()
    again = ingest([parquet], db=db, quarantine_dir=quarantine, fmt="parquet")
    second = time.perf_counter() - start
    assert (again.inserted, again.duplicates) == (0, ROWS), again.lines()
    return first, second


def parquet_to_duckdb(repeats: int) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    try:
        parquet = tmp / "points.parquet"
        _make_parquet(parquet, ROWS)
        db = tmp / "telemetry.duckdb"
        ours: list[float] = []
        again: list[float] = []
        base: list[float] = []
        for i in range(repeats):  # alternate the order so neither side always runs on a warm cache
            if i % 2 == 0:
                base.append(ROWS / _baseline(parquet, db))
            first, second = _ours(parquet, db, tmp / "q")
            ours.append(ROWS / first)
            again.append(ROWS / second)
            if i % 2 == 1:
                base.append(ROWS / _baseline(parquet, db))
        return [
            Row(
                figure=f"ingest parquet→duckdb {ROWS / 1e6:g}M rows",
                unit="rows/s",
                samples=ours,
                baseline="duckdb INSERT…SELECT read_parquet",
                baseline_samples=base,
                target=">= 0.8",
                note="validates, dedupes",
            ),
            Row(
                figure=f"re-ingest same parquet {ROWS / 1e6:g}M rows (all duplicates)",
                unit="rows/s",
                samples=again,
                baseline="first ingest (row above)",
                baseline_samples=ours,
                note="anti-join against stored rows",
            ),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


BENCHMARKS = [parquet_to_duckdb]
