"""`selfheal experiment run`: a sweep tracked in MLflow (parent run, child per config, model, plots)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_tracking_support import make_home, small_spec, write_spec

from engine.home import Home
from engine.tracking import registry
from engine.tracking.experiment import SweepResult, run_experiment

# A real sweep on 3 days of synth data with MLflow on SQLite: ~20 s on the shared 2-core machine.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Home, SweepResult, Path]:
    root = tmp_path_factory.mktemp("sweep")
    home = make_home(root / "home", days=3)
    spec = small_spec(
        detectors=[
            {"class": "HBOS", "grid": {"n_bins": [10, 20]}},
            # valid at load, impossible on this data (more components than features): it must fail
            # alone at fit, not sink the sweep
            {"class": "PCA", "params": {"n_components": 500}},
        ]
    )
    path = write_spec(root / "sweep.yaml", spec)
    return home, run_experiment(path, home=home, workers=1, progress=False), path


def test_parent_and_children_are_tracked(sweep: tuple[Home, SweepResult, Path]) -> None:
    home, result, _ = sweep
    client = MlflowClient(result.tracking_uri)
    assert result.tracking_uri == home.tracking_uri
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags[registry.TAG_KIND] == "sweep"
    assert parent.data.tags[registry.TAG_BEST_RUN] == result.best_run_id
    assert parent.data.tags[registry.TAG_FINGERPRINT] == result.data_fingerprint
    assert "best_f1" in parent.data.metrics
    inputs = {a.path for a in client.list_artifacts(result.parent_run_id, "inputs")}
    assert inputs == {"inputs/sweep.yaml", "inputs/data_fingerprint.json"}
    fp = json.loads(
        Path(client.download_artifacts(result.parent_run_id, "inputs/data_fingerprint.json")).read_text()
    )
    assert fp["fingerprint"] == result.data_fingerprint and fp["test_rows"] > 0

    children = client.search_runs(
        [result.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'", max_results=50
    )
    assert len(children) == 3
    ok = [c for c in children if c.info.status == "FINISHED"]
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(ok) == 2 and len(failed) == 1
    assert "n_components" in failed[0].data.tags["selfheal.error"]
    for child in ok:
        for metric in ("f1", "precision", "recall", "false_alarms_per_day", "nab_score", "average_precision"):
            assert metric in child.data.metrics, metric
        assert child.data.params["detector"] == "HBOS"
        assert child.data.params["param.n_bins"] in ("10", "20")
        plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
        assert plots == {"plots/scores.png", "plots/precision_recall.png"}
        assert child.data.tags[registry.TAG_MODEL_URI].startswith("models:/")
    best_f1 = max(c.data.metrics["f1"] for c in ok)
    assert result.best is not None and result.best.metrics["f1"] == best_f1


def test_artifacts_live_under_the_home_folder(sweep: tuple[Home, SweepResult, Path]) -> None:
    home, _, _ = sweep
    assert home.mlflow_db.is_file()
    assert any(home.mlflow_artifacts.rglob("scores.png"))


def test_same_spec_same_data_same_fingerprint(sweep: tuple[Home, SweepResult, Path], tmp_path: Path) -> None:
    home, result, spec_path = sweep
    from engine.tracking.experiment import prepare
    from engine.tracking.spec import load_spec

    again = prepare(load_spec(spec_path), home.telemetry_db)
    assert again.dataset.fingerprint == result.data_fingerprint
    narrower = load_spec(write_spec(tmp_path / "n.yaml", small_spec(data={"services": ["gateway"]})))
    assert prepare(narrower, home.telemetry_db).dataset.fingerprint != result.data_fingerprint


def test_cli_runs_the_grid_in_parallel_processes(
    sweep: tuple[Home, SweepResult, Path], tmp_path: Path
) -> None:
    home, _, _ = sweep
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    spec = write_spec(tmp_path / "cli.yaml", small_spec(tracking={"experiment": "cli-sweep"}))
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--home", str(home.root), "experiment", "run", str(spec),
         "--workers", "2", "--tracking-uri", uri],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best by f1" in proc.stdout and " promote " in proc.stdout.split("next: ")[1]
    assert "sweep test-sweep" in proc.stderr  # the tqdm bar
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cli-sweep")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3  # parent + 2 children
    parent = next(r for r in runs if r.data.tags.get(registry.TAG_KIND) == "sweep")
    assert parent.data.params["workers"] == "2"
