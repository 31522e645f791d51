"""The DuckDB telemetry store: schema, round trip, idempotence, queries and the lock message."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from engine.errors import InputError, StoreError, StoreLockedError
from engine.telemetry.store import TelemetryStore

T0 = datetime(2026, 1, 1)


def _points(
    n: int = 5, service: str = "gateway", metric: str = "latency_p99_ms", start: int = 0
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": [T0 + timedelta(seconds=10 * (start + i)) for i in range(n)],
            "service": [service] * n,
            "metric": [metric] * n,
            "value": [float(start + i) for i in range(n)],
        },
        schema_overrides={"ts": pl.Datetime("us")},
    )


def _incidents() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "service": ["gateway", "vector-db"],
            "kind": ["latency_creep", "stale_index"],
            "start": [T0, T0 + timedelta(hours=2)],
            "end": [T0 + timedelta(hours=1), T0 + timedelta(hours=3)],
            "source": ["synth", "synth"],
        },
        schema_overrides={"start": pl.Datetime("us"), "end": pl.Datetime("us")},
    )


def test_schema_has_the_documented_tables_and_types(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    with TelemetryStore(db):
        pass
    con = duckdb.connect(str(db), read_only=True)
    try:
        cols = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_name IN ('telemetry', 'incidents') ORDER BY table_name, ordinal_position"
        ).fetchall()
    finally:
        con.close()
    assert cols == [
        ("incidents", "service", "VARCHAR"),
        ("incidents", "kind", "VARCHAR"),
        ("incidents", "start", "TIMESTAMP"),
        ("incidents", "end", "TIMESTAMP"),
        ("incidents", "source", "VARCHAR"),
        ("telemetry", "ts", "TIMESTAMP"),
        ("telemetry", "service", "VARCHAR"),
        ("telemetry", "metric", "VARCHAR"),
        ("telemetry", "value", "DOUBLE"),
        ("telemetry", "labels", "VARCHAR"),
        ("telemetry", "source", "VARCHAR"),
    ]


def test_points_round_trip_sorted_with_filters(tmp_path: Path) -> None:
    a = _points(4, "vector-db", "retrieval_precision")
    b = _points(6, "gateway", "latency_p99_ms").with_columns(labels=pl.lit('{"zone":"eu"}'))
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        assert store.insert_points(pl.concat([a, b], how="diagonal"), source="test") == 10
    with TelemetryStore(tmp_path / "t.duckdb", read_only=True) as store:
        got = store.points()
        assert got.columns == ["ts", "service", "metric", "value", "labels"]
        assert got.schema["ts"] == pl.Datetime("us")
        assert got["service"].to_list() == ["gateway"] * 6 + ["vector-db"] * 4
        assert got.filter(pl.col("service") == "gateway").drop("labels").equals(b.drop("labels"))
        assert got["labels"].to_list()[:1] == ['{"zone":"eu"}']
        window = store.points(
            services=["gateway"], start=T0 + timedelta(seconds=10), end=T0 + timedelta(seconds=40)
        )
        assert window["value"].to_list() == [1.0, 2.0, 3.0]  # end is exclusive
        assert store.points(metrics=["nope"]).height == 0


def test_insert_points_is_idempotent_and_dedupes_within_a_batch(tmp_path: Path) -> None:
    df = _points(5)
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        assert store.insert_points(df, source="a") == 5
        assert store.insert_points(df, source="a") == 0
        overlapping = pl.concat([_points(5, start=3), _points(2, start=3)])  # 3..7 plus 3, 4 again
        assert store.insert_points(overlapping, source="b") == 3
        labelled = df.with_columns(labels=pl.lit('{"pod":"1"}'))  # another series: same keys, labels differ
        assert store.insert_points(labelled, source="c") == 5
        assert store.insert_points(labelled, source="c") == 0
        assert store.summary()["points"] == 13
        first_wins = store.query("SELECT value FROM telemetry WHERE ts = ? AND labels IS NULL", [df["ts"][3]])
        assert first_wins["value"].to_list() == [3.0]


def test_insert_points_refuses_bad_frames(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        with pytest.raises(InputError, match="lacks column"):
            store.insert_points(_points().drop("metric"), source="x")
        with pytest.raises(InputError, match="non-finite"):
            store.insert_points(_points().with_columns(value=pl.lit(float("inf"))), source="x")
        assert store.summary()["points"] == 0


def test_incidents_round_trip_idempotent_and_overlap_filter(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        assert store.insert_incidents(_incidents()) == 2
        assert store.insert_incidents(_incidents()) == 0
        got = store.incidents()
        assert got.columns == ["service", "kind", "start", "end", "source"]
        assert got.equals(_incidents())
        later = store.incidents(start=T0 + timedelta(hours=1, minutes=30))
        assert later["kind"].to_list() == ["stale_index"]
        assert store.incidents(services=["gateway"], end=T0)["kind"].to_list() == []


def test_query_is_select_only(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        store.insert_points(_points(3), source="x")
        assert store.query("SELECT count(*) AS n FROM telemetry")["n"].to_list() == [3]
        with pytest.raises(StoreError, match="one SELECT"):
            store.query("DELETE FROM telemetry")
        with pytest.raises(StoreError, match="one SELECT"):
            store.query("SELECT 1; DROP TABLE telemetry")
        assert store.summary()["points"] == 3


def test_summary_counts_range_services_metrics(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        store.insert_points(pl.concat([_points(3), _points(2, "vector-db", "cpu_util")]), source="x")
        store.insert_incidents(_incidents())
        summary = store.summary()
    assert summary["points"] == 5
    assert summary["series"] == 2
    assert summary["services"] == ["gateway", "vector-db"]
    assert summary["metrics"] == ["cpu_util", "latency_p99_ms"]
    assert (summary["start"], summary["end"]) == (T0, T0 + timedelta(seconds=20))
    assert summary["incident_kinds"] == {"latency_creep": 1, "stale_index": 1}


def test_read_only_store_that_does_not_exist_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist") as info:
        TelemetryStore(tmp_path / "missing.duckdb", read_only=True).open()
    assert "selfheal ingest" in (info.value.hint or "")


def test_mixed_modes_in_one_process_get_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    with TelemetryStore(db), pytest.raises(StoreError, match="already holds it open") as info:
        TelemetryStore(db, read_only=True).open()
    assert "close the other TelemetryStore" in (info.value.hint or "")


HOLDER = textwrap.dedent(
    """
    import sys
    from engine.telemetry.store import TelemetryStore
    with TelemetryStore(sys.argv[1]):
        print("ready", flush=True)
        sys.stdin.read()
    """
)


@pytest.mark.parametrize("read_only", [False, True])
def test_locked_store_names_the_holder_and_what_to_do(tmp_path: Path, read_only: bool) -> None:
    db = tmp_path / "t.duckdb"
    with TelemetryStore(db):
        pass
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(db), "--marker-holder"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError) as info:
            TelemetryStore(db, read_only=read_only).open()
        message = str(info.value)
        assert f"PID {holder.pid}" in message
        assert "--marker-holder" in message  # the command line, so a person can recognise it
        assert str(db) in message
        assert f"kill {holder.pid}" in (info.value.hint or "")
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    with TelemetryStore(db) as store:  # released: usable again
        assert store.summary()["points"] == 0
