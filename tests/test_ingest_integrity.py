"""`selfheal ingest` loses nothing and hides nothing: a malformed input is reported while the
others load, rejected rows always reach the quarantine, conflicting values are told apart from
duplicates, incidents written by `synth --out` load back, labels are one canonical form, and a
large single input shows its progress."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import typer

from engine import cli
from engine.telemetry import commands
from engine.telemetry.ingest import ingest
from engine.telemetry.readers import read_path
from engine.telemetry.store import TelemetryStore
from engine.telemetry.synth import SynthData, write_parquet

CSV = """ts,service,metric,value
2026-01-01 00:00:00,gateway,latency_p99_ms,1
2026-01-01 00:00:10,gateway,latency_p99_ms,2
2026-01-01 00:00:20,gateway,latency_p99_ms,oops
"""


def _nab(root: Path, windows: Any) -> Path:
    (root / "data" / "catA").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "data" / "catA" / "one.csv").write_text(
        "timestamp,value\n2014-01-01 00:00:00,1\n2014-01-01 00:05:00,2\n"
    )
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return root


def _quarantine(path: Path | None) -> list[dict[str, Any]]:
    assert path is not None
    return [json.loads(line) for line in path.read_text().splitlines()]


def _stored(db: Path) -> pl.DataFrame:
    with TelemetryStore(db, read_only=True) as store:
        return store.points()


GOOD_SPAN = ["2014-01-01 00:00:00.000000", "2014-01-01 00:05:00.000000"]


@pytest.mark.parametrize(
    ("windows", "expected"),
    [
        ([["2014-01-01", "2014-01-02"]], "a JSON object"),
        ({"catA/one.csv": "2014-01-01"}, "'catA/one.csv'"),
        ({"catA/one.csv": [GOOD_SPAN[0]]}, "'catA/one.csv'[0]"),
        ({"catA/one.csv": [[*GOOD_SPAN, GOOD_SPAN[1]]]}, "'catA/one.csv'[0]"),
        ({"catA/one.csv": [GOOD_SPAN, ["soon", GOOD_SPAN[1]]]}, "'catA/one.csv'[1]"),
        ({"catA/one.csv": [[GOOD_SPAN[1], GOOD_SPAN[0]]]}, "ends before it starts"),
    ],
    ids=["not-a-dict", "not-a-list", "one-item", "three-items", "bad-timestamp", "end-before-start"],
)
def test_malformed_nab_labels_are_reported_and_the_other_inputs_load(
    tmp_path: Path, windows: Any, expected: str
) -> None:
    bad_csv = tmp_path / "m.csv"
    bad_csv.write_text(CSV)
    corpus = _nab(tmp_path / "nab", windows)
    later = tmp_path / "later.csv"
    later.write_text("ts,service,metric,value\n2026-01-02 00:00:00,vector-db,cpu_util,0.5\n")
    db = tmp_path / "t.duckdb"
    report = ingest([bad_csv, corpus, later], db=db, quarantine_dir=tmp_path / "q")
    nab = report.files[1]
    assert nab.error is not None
    assert "combined_windows.json" in nab.error and expected in nab.error
    assert nab.inserted == 0
    assert (report.files[0].inserted, report.files[2].inserted) == (2, 1)
    assert sorted(_stored(db)["service"].unique()) == ["gateway", "vector-db"]  # no half-ingested NAB
    assert [(r["line"], r["reason"]) for r in _quarantine(report.quarantine)] == [(4, "non_numeric_value")]


def test_conflicting_values_are_counted_and_quarantined_apart_from_duplicates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "t.duckdb"
    first = tmp_path / "first.csv"
    first.write_text(
        "ts,service,metric,value\n"
        "2026-01-01 00:00:00,gateway,m,1\n"
        "2026-01-01 00:00:00,gateway,m,1\n"  # identical repeat: a duplicate
        "2026-01-01 00:00:00,gateway,m,7\n"  # same key, another value: a conflict
        "2026-01-01 00:00:10,gateway,m,2\n"
    )
    report = ingest([first], db=db, quarantine_dir=tmp_path / "q")
    assert (report.inserted, report.duplicates, report.conflicts) == (2, 1, 1)
    [row] = _quarantine(report.quarantine)
    assert row == {
        "file": str(first.resolve()),
        "line": 4,
        "reason": "conflicting_value",
        "raw": "2026-01-01 00:00:00,gateway,m,7",
        "stored": 1.0,
        "value": 7.0,
    }
    second = tmp_path / "second.jsonl"
    second.write_text(
        '{"ts": "2026-01-01 00:00:10", "service": "gateway", "metric": "m", "value": 2.5}\n'
        '{"ts": "2026-01-01 00:00:00", "service": "gateway", "metric": "m", "value": 1}\n'
    )
    again = ingest([second], db=db, quarantine_dir=tmp_path / "q")
    assert (again.inserted, again.duplicates, again.conflicts) == (0, 1, 1)
    assert [(r["line"], r["stored"], r["value"]) for r in _quarantine(again.quarantine)] == [(1, 2.0, 2.5)]
    assert again.as_dict()["conflicts"] == 1
    assert "duplicates skipped 1, conflicts 1 (kept the stored value; see the quarantine)" in "\n".join(
        again.lines()
    )
    assert _stored(db)["value"].to_list() == [1.0, 2.0]

    # the CLI prints the count
    app = typer.Typer(pretty_exceptions_enable=False)
    app.callback()(cli._root)
    commands.register(app)
    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setenv("SELFHEAL_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as info:
        cli.main(["ingest", str(first)])
    assert info.value.code == 0
    assert "read 4, inserted 2, duplicates skipped 1, conflicts 1" in capsys.readouterr().out


@pytest.mark.nab
def test_real_nab_dst_repeats_show_as_conflicts(nab_corpus: Path, tmp_path: Path) -> None:
    report = ingest([nab_corpus], db=tmp_path / "t.duckdb", quarantine_dir=tmp_path / "q")
    conflicts = [r for r in _quarantine(report.quarantine) if r["reason"] == "conflicting_value"]
    assert {Path(r["file"]).name for r in conflicts} == {"ec2_network_in_5abac7.csv"}
    assert report.conflicts == len(conflicts) == 7  # 11 repeats of 03:00, 4 of them equal to the first
    assert report.duplicates == 11 + 4  # ec2_disk_write_bytes_1ef3de repeats 0.0 eleven times
    assert all(r["raw"].startswith("2014-03-09 03:00:00,") for r in conflicts)


def _incidents() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "service": ["vector-db", "inference-a", None],
            "kind": ["stale_index", "bad_deploy", "memory_leak"],
            "start": [datetime(2026, 1, 6, 1), datetime(2026, 1, 6, 5), datetime(2026, 1, 6, 9)],
            "end": [datetime(2026, 1, 6, 2), datetime(2026, 1, 6, 4), datetime(2026, 1, 6, 10)],
            "source": ["synth"] * 3,
        },
        schema_overrides={"start": pl.Datetime("us"), "end": pl.Datetime("us")},
    )


def test_incidents_written_by_synth_out_ingest_back(tmp_path: Path) -> None:
    points = pl.DataFrame(
        {"ts": [datetime(2026, 1, 6)], "service": ["vector-db"], "metric": ["cpu_util"], "value": [0.4]},
        schema_overrides={"ts": pl.Datetime("us")},
    )
    data = SynthData(
        points=points,
        incidents=_incidents(),
        topology={},
        faults=(),
        start=datetime(2026, 1, 6),
        end=datetime(2026, 1, 7),
        seed=0,
    )
    out = tmp_path / "out"
    _, incidents_path = write_parquet(data, out / "synth.parquet")
    db = tmp_path / "t.duckdb"
    report = ingest([out], db=db, quarantine_dir=tmp_path / "q")
    by_name = {f.path.name: f for f in report.files}
    inc = by_name["synth.incidents.parquet"]
    assert (inc.format, inc.error, inc.read, inc.incidents_read, inc.incidents_inserted) == (
        "parquet",
        None,
        3,
        1,
        1,
    )
    assert by_name["synth.parquet"].inserted == 1
    assert (
        f"{incidents_path.resolve()} [parquet, incidents]: read 3, incidents inserted 1 of 1, rejected 2"
        in (report.lines())
    )
    assert report.lines()[-2].endswith(", incidents inserted 1")
    assert [(r["line"], r["reason"]) for r in _quarantine(report.quarantine)] == [
        (2, "end_before_start"),
        (3, "missing_service"),
    ]
    with TelemetryStore(db, read_only=True) as store:
        assert store.incidents().select("service", "kind").rows() == [("vector-db", "stale_index")]
    assert str(incidents_path.resolve()) in {r["file"] for r in _quarantine(report.quarantine)}
    only_incidents = ingest([incidents_path], db=db, quarantine_dir=tmp_path / "q")
    only_incidents.check()  # an incidents-only input is something valid
    assert only_incidents.incidents_inserted == 0  # already stored


def test_a_skipped_input_is_reported_not_logged_as_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "good.csv"
    good.write_text(CSV)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("host,v\nx,1\n")
    with caplog.at_level(logging.DEBUG, logger="engine.telemetry"):
        report = ingest([good, wrong], db=tmp_path / "t.duckdb", quarantine_dir=tmp_path / "q")
    assert report.files[1].error is not None and "lacks column(s)" in report.files[1].error
    skipped = [r for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert [r.levelno for r in skipped] == [logging.DEBUG]


def test_a_large_single_input_shows_its_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "m.csv"
    src.write_text(CSV)
    ingest([src], db=tmp_path / "t.duckdb", quarantine_dir=tmp_path / "q", progress=True)
    assert capsys.readouterr().err == ""  # small: no bar
    ingest(
        [src], db=tmp_path / "t.duckdb", quarantine_dir=tmp_path / "q", progress=True, large_input_bytes=10
    )
    err = capsys.readouterr().err
    assert "m.csv" in err
    for step in ("read", "validate", "write"):
        assert step in err


def test_labels_written_two_ways_are_one_series(tmp_path: Path) -> None:
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        '{"ts": 1767225600, "service": "api", "metric": "up", "value": 1, '
        '"labels": {"method": "GET", "code": "200"}}\n'
    )
    prom = tmp_path / "m.prom"
    prom.write_text('up{job="api",method="GET",code="200"} 1 1767225600000\n')
    csv = tmp_path / "m.csv"
    csv.write_text(
        "ts,service,metric,value,labels\n"
        '2026-01-01 00:00:00,api,up,1,"{""method"": ""GET"", ""code"": ""200""}"\n'
    )
    db = tmp_path / "t.duckdb"
    report = ingest([jsonl, prom, csv], db=db, quarantine_dir=tmp_path / "q")
    assert (report.inserted, report.duplicates) == (1, 2)
    assert _stored(db)["labels"].to_list() == ['{"code":"200","method":"GET"}']


def test_jsonl_rejects_non_string_service_metric_and_non_object_labels(tmp_path: Path) -> None:
    src = tmp_path / "m.jsonl"
    src.write_text(
        "\n".join(
            [
                '{"ts": 1767225600, "service": ["x"], "metric": "m", "value": 1}',
                '{"ts": 1767225600, "service": "a", "metric": 5, "value": 1}',
                '{"ts": 1767225600, "service": {"a": 1}, "metric": "m", "value": 1}',
                '{"ts": 1767225600, "service": "5", "metric": "true", "value": 1}',
                '{"ts": 1767225600, "service": "a", "metric": "m", "value": 1, "labels": [1]}',
                '{"ts": 1767225600, "service": "a", "metric": "m", "value": 2, "labels": {"z": 1, "a": 2}}',
            ]
        )
        + "\n"
    )
    result = read_path(src, "jsonl")
    assert list(zip(result.rejects["line"], result.rejects["reason"], strict=True)) == [
        (1, "non_string_service"),
        (2, "non_string_metric"),
        (3, "non_string_service"),
        (5, "malformed_labels"),
    ]
    assert result.points.select("service", "metric", "labels").rows() == [
        ("5", "true", None),
        ("a", "m", '{"a":2,"z":1}'),
    ]
