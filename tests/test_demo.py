"""`selfheal demo`: the whole loop (research, bundle, game day), then again (idempotent), --home honoured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.alone]  # see `make test`


def _demo(home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "demo", "--days", "3", *extra],
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_demo_runs_end_to_end_twice(tmp_path: Path) -> None:
    home = tmp_path / "demo-home"
    first = _demo(home)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    assert "== selfheal demo: summary ==" in out
    assert "PROMOTED: selfheal-detector version 1" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{home.resolve()}/mlflow.db" in out
    assert "jupyter lab" in out and "03_scheduled_evaluation" in out
    assert (home / "telemetry.duckdb").is_file() and (home / "mlflow.db").is_file()
    assert len(list((home / "notebooks").glob("03_scheduled_evaluation-*.ipynb"))) == 1
    assert "(verified)" in out
    bundles = [p for p in (home / "bundles").iterdir() if (p / "manifest.json").is_file()]
    assert len(bundles) == 1
    assert "game day    every fault healed" in out
    report = home / "chaos" / "game-day" / "report.html"
    assert report.is_file() and str(report.resolve()) in out

    # the second run skips the (slow) game day: it checks idempotency of the research loop and bundle
    second = _demo(home, "--no-game-day")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "(0 new)" in second.stdout  # the same data, not duplicated
    assert "champion    models:/selfheal-detector@champion = version 1" in second.stdout
    assert len(list((home / "notebooks").glob("03_scheduled_evaluation-*.ipynb"))) == 2
