"""`selfheal ingest`: every format, bad rows quarantined with file and line, idempotence, NAB, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
import typer

from engine import cli
from engine.errors import InputError
from engine.telemetry import commands
from engine.telemetry.ingest import ingest
from engine.telemetry.readers import detect_format, read_path
from engine.telemetry.store import TelemetryStore

GOOD_CSV = """ts,service,metric,value
2026-01-01 00:00:00,gateway,latency_p99_ms,120.5
2026-01-01T00:00:10Z,gateway,latency_p99_ms,121
2026-01-01 00:00:20.250,gateway,latency_p99_ms,119.75
"""

BAD_CSV = """ts,service,metric,value
2026-01-01 00:00:00,gateway,latency_p99_ms,1
yesterday,gateway,latency_p99_ms,2
2026-01-01 00:00:20,gateway,latency_p99_ms,fast

2026-01-01 00:00:30,gateway,latency_p99_ms,inf
2026-01-01 00:00:40,,latency_p99_ms,4
2026-01-01 00:00:50,gateway,latency_p99_ms,NaN
2026-01-01 00:01:00,gateway,latency_p99_ms,6
"""


@pytest.fixture
def ingest_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real root (``--home``, logging) and error boundary with only the ingest command, so a
    command module of another area that fails to build cannot fail these tests."""
    app = typer.Typer(pretty_exceptions_enable=False)
    app.callback()(cli._root)
    commands.register(app)
    monkeypatch.setattr(cli, "app", app)


def _run(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        cli.main(list(args))
    return int(info.value.code or 0)


def _quarantine(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _stored(home: Path) -> pl.DataFrame:
    with TelemetryStore(home / "t.duckdb", read_only=True) as store:
        return store.points()


def test_csv_round_trip_parses_iso_variants(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "m.csv"
    src.write_text(GOOD_CSV)
    report = ingest([src], db=home / "t.duckdb", quarantine_dir=home / "q")
    assert (report.read, report.inserted, report.quarantine) == (3, 3, None)
    with TelemetryStore(home / "t.duckdb", read_only=True) as store:
        got = store.points()
    assert got["ts"].to_list() == [
        datetime(2026, 1, 1, 0, 0, 0),
        datetime(2026, 1, 1, 0, 0, 10),
        datetime(2026, 1, 1, 0, 0, 20, 250000),
    ]
    assert got["value"].to_list() == [120.5, 121.0, 119.75]


def test_bad_rows_are_quarantined_with_file_line_raw_and_reason(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text(BAD_CSV)
    report = ingest([src], db=home / "t.duckdb", quarantine_dir=home / "q")
    assert report.inserted == 2
    assert report.read == 7  # the blank line is not a row
    assert dict(report.rejected) == {
        "unparsable_ts": 1,
        "non_numeric_value": 1,
        "non_finite_value": 2,
        "missing_service": 1,
    }
    assert report.quarantine is not None and report.quarantine.parent == home / "q"
    rows = _quarantine(report.quarantine)
    assert [(r["line"], r["reason"]) for r in rows] == [
        (3, "unparsable_ts"),
        (4, "non_numeric_value"),
        (6, "non_finite_value"),
        (7, "missing_service"),
        (8, "non_finite_value"),
    ]
    lines = BAD_CSV.splitlines()
    for r in rows:
        assert r["file"] == str(src.resolve())
        assert r["raw"] == lines[int(r["line"]) - 1]  # type: ignore[call-overload]


def test_reingest_same_file_inserts_nothing_new(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "m.csv"
    src.write_text(GOOD_CSV + "2026-01-01 00:00:00,gateway,latency_p99_ms,999\n")  # a repeated key
    first = ingest([src], db=home / "t.duckdb", quarantine_dir=home / "q")
    assert (first.inserted, first.duplicates, first.conflicts) == (3, 0, 1)  # 999 is not 120.5
    second = ingest([src], db=home / "t.duckdb", quarantine_dir=home / "q")
    assert (second.read, second.inserted, second.duplicates, second.conflicts) == (4, 0, 3, 1)
    with TelemetryStore(home / "t.duckdb", read_only=True) as store:
        got = store.points()
    assert got.height == 3
    assert got["value"][0] == 120.5  # first value for a key wins


def test_parquet_with_native_types_and_bad_rows(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "m.parquet"
    pl.DataFrame(
        {
            "timestamp": [datetime(2026, 1, 1, h) for h in range(4)],
            "service": ["a", "a", None, "a"],
            "metric": ["m"] * 4,
            "value": [1.0, float("nan"), 3.0, 4.0],
            "labels": ['{"pod":"p1"}', None, None, None],
        },
    ).with_columns(
        pl.col("timestamp").cast(pl.Datetime("ns")).dt.replace_time_zone("Europe/Paris")
    ).write_parquet(src)
    report = ingest([src], db=home / "t.duckdb", quarantine_dir=home / "q")
    assert report.inserted == 2
    assert report.quarantine is not None
    rows = _quarantine(report.quarantine)
    assert [(r["line"], r["reason"]) for r in rows] == [(2, "non_finite_value"), (3, "missing_service")]
    assert json.loads(str(rows[1]["raw"]))["metric"] == "m"
    with TelemetryStore(home / "t.duckdb", read_only=True) as store:
        got = store.points()
    assert got["ts"].to_list() == [datetime(2025, 12, 31, 23), datetime(2026, 1, 1, 2)]  # Paris → UTC
    assert got["labels"].to_list() == ['{"pod":"p1"}', None]


def test_jsonl_numbers_strings_epoch_and_malformed_lines(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "m.jsonl"
    src.write_text(
        "\n".join(
            [
                '{"ts": "2026-01-01T00:00:00+01:00", "service": "a", "metric": "m", "value": 1.5}',
                '{"ts": 1767225600, "service": "a", "metric": "m", "value": 2}',
                '{"ts": 1767225600, "service": "a", "metric": "m", "value": "2"}',
                "{not json",
                '{"ts": "2026-01-01T01:00:00", "service": "a", "metric": "m"}',
                '{"ts": "2026-01-01T02:00:00", "service": "a", "metric": "m", "value": true}',
                "",
            ]
        )
    )
    report = ingest([src], db=home / "t.duckdb", quarantine_dir=home / "q")
    assert (report.read, report.inserted) == (6, 2)
    assert report.quarantine is not None
    rows = _quarantine(report.quarantine)
    assert [(r["line"], r["reason"]) for r in rows] == [
        (3, "non_numeric_value"),  # a value is a JSON number, as the engine reads it
        (4, "malformed_line"),
        (5, "missing_value"),
        (6, "non_numeric_value"),
    ]
    assert rows[1]["raw"] == "{not json"
    with TelemetryStore(home / "t.duckdb", read_only=True) as store:
        ts = store.points()["ts"].to_list()
    assert ts == [datetime(2025, 12, 31, 23), datetime(2026, 1, 1)]  # 1767225600 = 2026-01-01 UTC


PROM = """# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{job="api",method="GET",code="200"} 1027 1767225600000
http_requests_total{service="gateway",job="edge",method="POST"} 3
queue_depth 7
broken{ 1
latency_seconds{service="vector-db"} NaN
"""


def test_prometheus_text_maps_labels_and_timestamps(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "scrape.prom"
    src.write_text(PROM)
    mtime = datetime(2026, 2, 1, 12)
    os.utime(src, (mtime.timestamp(), mtime.timestamp()))
    report = ingest([src], db=home / "t.duckdb", quarantine_dir=home / "q", default_ts=datetime(2026, 3, 1))
    assert (report.read, report.inserted) == (5, 3)
    assert report.quarantine is not None
    assert [(r["line"], r["reason"]) for r in _quarantine(report.quarantine)] == [
        (6, "malformed_line"),
        (7, "non_finite_value"),
    ]
    got = _stored(home).sort("service")
    assert got.select("service", "metric", "labels").rows() == [
        ("api", "http_requests_total", '{"code":"200","method":"GET"}'),
        ("gateway", "http_requests_total", '{"job":"edge","method":"POST"}'),
        ("scrape", "queue_depth", None),
    ]
    assert got["ts"].to_list() == [datetime(2026, 1, 1), datetime(2026, 3, 1), datetime(2026, 3, 1)]


def test_format_detection() -> None:
    assert detect_format(Path("x.csv")) == "csv"
    assert detect_format(Path("x.PARQUET")) == "parquet"
    assert detect_format(Path("x.ndjson")) == "jsonl"
    assert detect_format(Path("x.prom")) == "prom"
    with pytest.raises(InputError, match="cannot tell the format"):
        detect_format(Path("x.xlsx"))


def _tiny_nab(root: Path) -> Path:
    (root / "data" / "catA").mkdir(parents=True)
    (root / "data" / "catB").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "data" / "catA" / "one.csv").write_text(
        "timestamp,value\n2014-01-01 00:00:00,1\n2014-01-01 00:05:00,2\n2014-01-01 00:10:00,oops\n"
    )
    (root / "data" / "catB" / "two.csv").write_text("timestamp,value\n2014-01-01 00:00:00,5\n")
    windows = {
        "catA/one.csv": [["2014-01-01 00:00:00.000000", "2014-01-01 00:05:00.000000"]],
        "catB/two.csv": [],
    }
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return root


def test_nab_folder_loads_series_and_windows(tmp_path: Path, home: Path) -> None:
    corpus = _tiny_nab(tmp_path / "nab")
    assert detect_format(corpus) == "nab"
    report = ingest([corpus], db=home / "t.duckdb", quarantine_dir=home / "q")
    assert (report.inserted, report.incidents_inserted) == (3, 1)
    assert report.quarantine is not None
    [bad] = _quarantine(report.quarantine)
    assert (bad["file"], bad["line"], bad["reason"], bad["raw"]) == (
        str((corpus / "data" / "catA" / "one.csv").resolve()),
        4,
        "non_numeric_value",
        "2014-01-01 00:10:00,oops",
    )
    with TelemetryStore(home / "t.duckdb", read_only=True) as store:
        assert store.summary()["services"] == ["catA/one", "catB/two"]
        assert store.summary()["metrics"] == ["value"]
        incidents = store.incidents()
    assert incidents.rows() == [
        ("catA/one", "nab_window", datetime(2014, 1, 1), datetime(2014, 1, 1, 0, 5), "nab"),
    ]
    again = ingest([corpus], db=home / "t.duckdb", quarantine_dir=home / "q")
    assert (again.inserted, again.incidents_inserted) == (0, 0)


def test_a_nab_data_file_without_a_labels_entry_refuses_the_corpus_as_scoring_does(tmp_path: Path) -> None:
    """One behaviour for ingest and `nab run`/`nab score`: a series without its windows would read
    as "no anomaly" everywhere, so the corpus is refused, naming the file and the fix."""
    from engine.evaluation.nab import load_corpus

    corpus = _tiny_nab(tmp_path / "nab")
    (corpus / "data" / "catB" / "three.csv").write_text("timestamp,value\n2014-01-01 00:00:00,5\n")
    for read in (lambda: read_path(corpus, "nab"), lambda: load_corpus(corpus)):
        with pytest.raises(InputError, match=r"no entry for catB/three\.csv") as caught:
            read()
        assert caught.value.hint is not None and '"catB/three.csv": []' in caught.value.hint


@pytest.mark.nab
def test_real_nab_subset_has_38_series_and_69_windows(nab_corpus: Path, tmp_path: Path) -> None:
    result = read_path(nab_corpus, "nab")
    assert result.rejects.height == 0
    assert result.points["service"].n_unique() == 38
    assert result.incidents is not None and result.incidents.height == 69
    with TelemetryStore(tmp_path / "t.duckdb") as store:
        store.insert_incidents(result.incidents)
        assert store.summary()["incidents"] == 69


@pytest.mark.usefixtures("ingest_app")
def test_cli_reports_counts_and_exit_codes(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD_CSV)
    assert _run("ingest", str(bad)) == 0
    out = capsys.readouterr().out
    assert "read 7, inserted 2, duplicates skipped 0, conflicts 0, rejected 5" in out
    assert "non_finite_value 2" in out
    assert f"store: {home / 'telemetry.duckdb'}: 2 points in 1 series of 1 services, 0 incidents" in out
    assert f"quarantine: {home / 'quarantine'}{os.sep}ingest-" in out

    assert _run("ingest", str(bad)) == 0  # re-ingest: all valid rows are duplicates, still success
    assert "inserted 0, duplicates skipped 2" in capsys.readouterr().out

    only_bad = tmp_path / "only_bad.csv"
    only_bad.write_text("ts,service,metric,value\nnope,a,m,1\n")
    assert _run("ingest", str(only_bad)) == 2
    captured = capsys.readouterr()
    assert "rejected 1 (unparsable_ts 1)" in captured.out
    assert captured.err.startswith("selfheal: error: nothing valid was read")

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("time,host,v\n1,2,3\n")
    assert _run("ingest", str(wrong)) == 2
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("lacks column(s) ts, service, metric, value") == 1
    assert captured.err.startswith("selfheal: error: nothing valid was read")

    assert _run("ingest", str(tmp_path / "missing.csv")) == 2
    assert "missing.csv does not exist" in capsys.readouterr().err

    assert _run("ingest", str(bad), "--format", "xlsx") == 2
    assert "unknown format 'xlsx'" in capsys.readouterr().err
    assert _run("ingest", "--json", str(bad)) == 0
    assert json.loads(capsys.readouterr().out)["duplicates"] == 2


def test_folder_of_files_and_one_unreadable_input_do_not_stop_the_run(tmp_path: Path, home: Path) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "a.csv").write_text(GOOD_CSV)
    (folder / "b.jsonl").write_text(
        '{"ts": "2026-01-02 00:00:00", "service": "s", "metric": "m", "value": 1}\n'
    )
    (folder / "c.csv").write_text("host,v\nx,1\n")  # no telemetry columns
    (folder / "notes.md").write_text("ignored: not a telemetry extension")
    report = ingest([folder], db=home / "t.duckdb", quarantine_dir=home / "q")
    assert [(f.path.name, f.format) for f in report.files] == [
        ("a.csv", "csv"),
        ("b.jsonl", "jsonl"),
        ("c.csv", "csv"),
    ]
    assert report.inserted == 4
    assert report.files[2].error is not None and "lacks column(s)" in report.files[2].error
    report.check()  # something valid was read: no error


HOLDER = """
import sys
from engine.telemetry.store import TelemetryStore
with TelemetryStore(sys.argv[1]):
    print("ready", flush=True)
    sys.stdin.read()
"""


@pytest.mark.usefixtures("ingest_app")
def test_cli_ingest_into_a_locked_store_names_the_holder(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "m.csv"
    src.write_text(GOOD_CSV)
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(home / "telemetry.duckdb")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        assert _run("ingest", str(src)) == 2
        err = capsys.readouterr().err
        assert err.startswith("selfheal: error: telemetry store ")
        assert f"is locked by PID {holder.pid} (" in err and "holder.py" in err
        assert f"kill {holder.pid}" in err
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert _run("ingest", str(src)) == 0


@pytest.mark.usefixtures("ingest_app")
def test_incident_labels_load_from_csv_and_a_wrong_file_is_named_once(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17: incidents.csv was refused as points lacking ts/metric/value, naming an internal
    ``line`` column, and the error was printed twice."""
    labels = tmp_path / "incidents.csv"
    labels.write_text(
        "service,kind,start,end,source\n"
        "checkout,latency,2026-01-01 00:00:00,2026-01-01 00:10:00,oncall\n"
        "checkout,latency,2026-01-01 01:00:00,2026-01-01 00:50:00,oncall\n"
    )
    assert _run("--home", str(home), "ingest", str(labels)) == 0
    out = capsys.readouterr().out
    assert "[csv, incidents]: read 2, incidents inserted 1 of 1, rejected 1" in out
    with TelemetryStore(home / "telemetry.duckdb", read_only=True) as store:
        assert store.incidents().rows() == [
            ("checkout", "latency", datetime(2026, 1, 1), datetime(2026, 1, 1, 0, 10), "oncall")
        ]
    [bad] = _quarantine(next((home / "quarantine").glob("*.jsonl")))
    assert (bad["line"], bad["reason"], bad["raw"]) == (
        3,
        "end_before_start",
        "checkout,latency,2026-01-01 01:00:00,2026-01-01 00:50:00,oncall",
    )
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("service,start\ncheckout,2026-01-01 00:00:00\n")
    assert _run("--home", str(home), "ingest", str(wrong)) == 2
    captured = capsys.readouterr()
    assert "(found: service, start)" in captured.out + captured.err
    assert (captured.out + captured.err).count("lacks column(s)") == 1
