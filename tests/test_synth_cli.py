"""`selfheal synth` lands the generated history in a real DuckDB store (and optionally Parquet)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from engine.errors import ConfigError, InputError
from engine.telemetry import synth_commands
from engine.telemetry.store import TelemetryStore
from engine.telemetry.synth import generate, load_config


def _app() -> typer.Typer:
    """The synth command as the root app registers it (home comes from SELFHEAL_HOME)."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Root."""

    synth_commands.register(app)
    return app


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(_app(), ["synth", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_synth_lands_points_and_incidents_in_the_store_once(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "synth.parquet"
    printed = _invoke("--days", "2", "--seed", "3", "--out", str(out))
    expected = generate(load_config(), days=2, seed=3)
    db = home / "telemetry.duckdb"
    with TelemetryStore(db, read_only=True) as store:
        stored = store.points()
        incidents = store.incidents()
    assert stored.height == expected.points.height == 2 * 8640 * 50
    assert (
        stored.select("ts", "service", "metric", "value")
        .sort("service", "metric", "ts")
        .equals(expected.points.sort("service", "metric", "ts"))
    )
    assert (
        incidents.sort("start")
        .select("service", "kind", "start", "end", "source")
        .equals(expected.incidents.sort("start"))
    )
    assert pl.read_parquet(out).equals(expected.points)
    assert pl.read_parquet(tmp_path / "synth.incidents.parquet").equals(expected.incidents)
    assert f"{expected.points.height:,} points in 50 series over 6 services" in printed
    assert f"{expected.points.height:,} new points" in printed
    assert "2026-01-05T00:00:00 .. 2026-01-07T00:00:00" in printed

    again = _invoke("--days", "2", "--seed", "3")
    assert "store: " in again and ": 0 new points, 0 new incidents" in again
    with TelemetryStore(db, read_only=True) as store:
        assert store.points().height == expected.points.height


def test_synth_scales_services_and_can_skip_the_store(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "eight.parquet"
    printed = _invoke("--days", "0.5", "--services", "8", "--no-store", "--out", str(out))
    assert "over 8 services" in printed and "store:" not in printed
    assert not (home / "telemetry.duckdb").exists()
    assert {"inference-c", "inference-d"} <= set(pl.read_parquet(out)["service"].unique())


def test_synth_start_option_and_its_error(home: Path) -> None:
    printed = _invoke("--days", "0.25", "--start", "2025-06-01T06:00:00")
    assert "2025-06-01T06:00:00 .. 2025-06-01T12:00:00" in printed
    with pytest.raises(InputError, match="not an ISO date"):
        _invoke("--days", "1", "--start", "yesterday")


def test_synth_out_a_directory_is_an_input_error_with_a_hint(home: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["synth", "--days", "0.25", "--out", str(tmp_path)])
    assert isinstance(result.exception, InputError)
    assert "is a folder" in str(result.exception)
    assert "synth.parquet" in (result.exception.hint or "")
    assert "synth:" not in result.stderr  # refused before any work started
    assert not (home / "telemetry.duckdb").exists()


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (["--days", "0"], ConfigError, "--days must be in"),
        (["--days", "0.0001"], ConfigError, "shorter than one interval"),
        (["--services", "0"], ConfigError, "--services must be between"),
        (["--start", "yesterday"], InputError, "not an ISO date"),
    ],
)
def test_synth_bad_arguments_fail_before_the_progress_bar(
    home: Path, args: list[str], error: type[Exception], message: str
) -> None:
    result = CliRunner().invoke(_app(), ["synth", *args])
    assert isinstance(result.exception, error)
    assert message in str(result.exception)
    assert "synth:" not in result.stderr
