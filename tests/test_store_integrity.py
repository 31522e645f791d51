"""The store keeps what it is given honest: conflicting values are told apart from duplicates,
labels are one canonical JSON whoever wrote them, a failed open releases the file, and a
transaction writes all of an input or none of it."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from engine.errors import InputError, StoreError
from engine.telemetry.store import TelemetryStore, canonical_labels, normalize_labels

T0 = datetime(2026, 1, 1)


def _frame(values: list[float], seconds: list[int], labels: list[str | None] | None = None) -> pl.DataFrame:
    n = len(values)
    return pl.DataFrame(
        {
            "ts": [T0 + timedelta(seconds=s) for s in seconds],
            "service": ["gateway"] * n,
            "metric": ["latency_p99_ms"] * n,
            "value": values,
            "labels": labels if labels is not None else [None] * n,
        },
        schema_overrides={"ts": pl.Datetime("us"), "labels": pl.String},
    )


def test_open_releases_the_file_when_schema_creation_fails(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    with TelemetryStore(db):
        pass
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    store = TelemetryStore(db)
    with pytest.raises(StoreError, match="schema version 99"):
        store.open()
    # a leaked writable connection would make this process refuse a read-only one
    with TelemetryStore(db, read_only=True) as again:
        assert again.summary()["points"] == 0
    with pytest.raises(StoreError, match="is not open"):
        _ = store.con


def test_write_points_tells_conflicts_from_duplicates(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        first = store.write_points(_frame([1.0, 2.0, 3.0], [0, 10, 20]), source="a")
        assert (first.inserted, first.duplicates, first.conflicts.height) == (3, 0, 0)
        # row 0 identical, row 1 changed, row 2 new, row 3 repeats row 2 changed, row 4 repeats row 2 same
        again = store.write_points(_frame([1.0, 2.5, 4.0, 4.5, 4.0], [0, 10, 30, 30, 30]), source="b")
        assert (again.inserted, again.duplicates) == (1, 2)
        assert again.conflicts.select("row", "value", "stored").rows() == [(1, 2.5, 2.0), (3, 4.5, 4.0)]
        assert again.conflicts["ts"].to_list() == [T0 + timedelta(seconds=10), T0 + timedelta(seconds=30)]
        stored = store.points()
    assert stored["value"].to_list() == [1.0, 2.0, 3.0, 4.0]  # the first value written wins


def test_a_repeat_is_compared_with_the_stored_value_not_the_batch_first(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        store.write_points(_frame([1.0], [0]), source="a")
        result = store.write_points(_frame([9.0, 1.0], [0, 0]), source="b")
    assert result.duplicates == 1
    assert result.conflicts.select("row", "value", "stored").rows() == [(0, 9.0, 1.0)]


def test_labels_are_stored_key_sorted_whoever_writes_them(tmp_path: Path) -> None:
    labels = ['{"pod": "p1", "code": "200"}', '{"code":"200","pod":"p1"}', "{}", None]
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        result = store.write_points(_frame([1.0, 1.0, 2.0, 2.0], [0, 0, 10, 10], labels), source="a")
        assert (result.inserted, result.duplicates) == (2, 2)
        got = store.points()
    assert got["labels"].to_list() == ['{"code":"200","pod":"p1"}', None]


def test_labels_that_are_not_a_json_object_are_refused(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        with pytest.raises(InputError, match="labels") as info:
            store.insert_points(_frame([1.0, 2.0], [0, 10], ['{"a":"1"}', "[1, 2]"]), source="a")
        assert "JSON object" in (info.value.hint or "")
        assert store.summary()["points"] == 0


def test_canonical_labels_is_sorted_compact_and_empty_is_none() -> None:
    assert canonical_labels({"b": "2", "a": "1"}) == '{"a":"1","b":"2"}'
    assert canonical_labels({}) is None


def test_normalize_labels_marks_what_is_not_an_object() -> None:
    labels, invalid = normalize_labels(pl.Series(['{"b": 1, "a": 2}', " ", "[1]", None, "{oops"]))
    assert labels.to_list() == ['{"a":2,"b":1}', None, "[1]", None, "{oops"]
    assert invalid.to_list() == [False, False, True, False, True]


def test_transaction_writes_all_or_nothing(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        with pytest.raises(InputError), store.transaction():
            store.insert_points(_frame([1.0], [0]), source="a")
            store.insert_incidents(pl.DataFrame({"service": ["x"]}))  # lacks columns: raises
        assert store.summary()["points"] == 0
        with store.transaction():
            store.insert_points(_frame([1.0], [0]), source="a")
        assert store.summary()["points"] == 1
