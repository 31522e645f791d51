"""An experiment and a promotion against a real `mlflow server` on 127.0.0.1 (not just SQLite)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from test_tracking_support import make_home, small_spec, write_spec

from engine.tracking import registry
from engine.tracking.experiment import run_experiment
from engine.tracking.model import load_logged_detector

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_experiment_and_promotion_against_a_tracking_server(server: str, tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", days=2)
    spec = write_spec(
        tmp_path / "spec.yaml", small_spec(detectors=[{"class": "HBOS", "grid": {"n_bins": [10, 20]}}])
    )
    result = run_experiment(spec, home=home, tracking_uri=server, workers=1, progress=False)
    assert result.tracking_uri == server
    assert not home.mlflow_db.exists()  # nothing went to the local default
    client = MlflowClient(server)
    best = client.get_run(result.best_run_id)
    assert "f1" in best.data.metrics
    assert {a.path for a in client.list_artifacts(result.best_run_id, "plots")} == {
        "plots/scores.png",
        "plots/precision_recall.png",
    }
    promoted = registry.promote(result.parent_run_id, "server-model", tracking_uri=server)
    assert promoted.promoted
    assert client.get_model_version_by_alias("server-model", "champion").run_id == result.best_run_id
    detector = load_logged_detector("models:/server-model@champion", tracking_uri=server, dst=tmp_path / "dl")
    assert detector.threshold_ > 0
