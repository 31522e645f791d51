"""`selfheal demo`: the whole loop (research, bundle, game day), then again (idempotent), --home honoured;
what it prints is what a passing run should print; and it runs from a wheel outside the checkout."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


def _demo(home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "demo", "--days", "3", *extra],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
@pytest.mark.alone  # see `make test`
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


def test_an_escalation_with_no_webhook_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The game day's engine has no escalation webhook: a failed verification it escalates is an
    expected event of a passing run, not an ERROR line in its middle."""
    from test_runtime_support import (
        TOKEN,
        AdminServer,
        fit_pipeline,
        ndjson,
        service_points,
        wait_for,
        write_rules,
    )

    from engine.runtime.adapters import assemble
    from engine.runtime.config import load_settings
    from engine.runtime.server import build_engine, serve_in_thread

    with AdminServer() as admin:
        rules = write_rules(tmp_path / "rules", admin.url)
        policy = rules / "platform.yaml"
        policy.write_text(policy.read_text().replace(f'escalate_to: "{admin.url}/hook"', ""))
        settings = load_settings(
            overrides={"port": 0, "token": TOKEN, "tick_s": 0.01, "verify_interval_s": 0.05}, environ={}
        )
        running = serve_in_thread(build_engine(assemble(fit_pipeline(), rules), settings, tmp_path))
        try:
            with caplog.at_level("DEBUG", logger="engine"):
                for t, anomalous in ((0, False), (3, True)):
                    points = service_points(1_700_000_000.0 + t, 3, feature_store=anomalous)
                    httpx.post(f"{running.url}/v1/telemetry", content=ndjson(list(points)))
                escalated = wait_for(
                    lambda: [r for r in caplog.records if "escalation for" in r.getMessage()], timeout=20
                )
        finally:
            running.stop()
    assert "no webhook configured" in escalated[0].getMessage()
    assert all(r.levelno < logging.ERROR for r in escalated), [r.levelname for r in escalated]
