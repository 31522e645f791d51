"""The research notebooks: thin, parameterised, and executed for real through papermill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from test_tracking_support import SMALL_FEATURES, make_home, small_spec, write_spec

from engine.home import Home
from engine.tracking import registry
from engine.tracking.notebooks import coerce, run_notebook

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("01_explore_telemetry.ipynb", "02_tune_detector.ipynb", "03_scheduled_evaluation.ipynb")


@pytest.mark.parametrize("name", NAMES)
def test_first_code_cell_is_tagged_parameters_and_no_outputs_are_committed(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert nb.metadata["kernelspec"]["name"] == "selfheal"
    assert any("import" in c.source and "engine" in c.source for c in code)


def test_parameter_values_are_read_as_yaml_scalars() -> None:
    assert coerce("2") == 2 and coerce("0.3") == 0.3 and coerce("null") is None and coerce("true") is True
    assert coerce("IForest") == "IForest" and coerce("2026-01-05") == "2026-01-05"


@pytest.fixture(scope="module")
def champion_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Home, Path]:
    """A home with 3 days of synth data and a promoted champion built from the small spec."""
    from engine.tracking.experiment import run_experiment

    root = tmp_path_factory.mktemp("nb")
    home = make_home(root / "home", days=3)
    spec = write_spec(root / "spec.yaml", small_spec(detectors=[{"class": "HBOS"}]))
    sweep = run_experiment(spec, home=home, workers=1, progress=False)
    assert sweep.best_run_id
    registry.promote(sweep.best_run_id, "nb-model", tracking_uri=home.tracking_uri)
    features = root / "features_spec.yaml"
    write_spec(features, small_spec(features=SMALL_FEATURES))
    return home, features


@pytest.mark.slow
def test_explore_and_tune_notebooks_execute(champion_home: tuple[Home, Path]) -> None:
    home, features = champion_home
    explore = run_notebook(NOTEBOOKS / NAMES[0], {"last_days": 1.0}, home=home)
    assert explore.ok, explore.error
    assert explore.output.parent == home.notebooks_out and explore.output.is_file()
    tune = run_notebook(
        NOTEBOOKS / NAMES[1],
        {"detector": "HBOS", "params": {"n_bins": 15}, "features_from": str(features), "threshold_q": 0.99},
        home=home,
    )
    assert tune.ok, tune.error
    executed = nbformat.read(tune.output, as_version=4)
    text = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "MLflow run:" in text and "image/png" in text
    client = registry._client(home.tracking_uri)
    exp = client.get_experiment_by_name("notebook-tuning")
    assert exp is not None and client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_scheduled_evaluation_passes_then_fails_below_the_bar(champion_home: tuple[Home, Path]) -> None:
    home, _ = champion_home
    nb = NOTEBOOKS / NAMES[2]
    ok = run_notebook(nb, {"model_name": "nb-model", "window_days": 1.0, "min_quality": 0.0}, home=home)
    assert ok.ok, ok.error
    client = registry._client(home.tracking_uri)
    run = client.get_run(ok.run_id)
    assert run.info.status == "FINISHED" and "f1" in run.data.metrics
    assert run.data.tags["selfheal.model_name"] == "nb-model"
    assert [a.path for a in client.list_artifacts(ok.run_id, "notebook")] == [f"notebook/{ok.output.name}"]

    # Through the CLI: the quality gate fails, papermill's verdict is printed, exit code 1.
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--home", str(home.root), "evaluate", str(nb),
         "-p", "model_name", "nb-model", "-p", "window_days", "1", "-p", "min_quality", "1.5"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "FAILED (QualityGateError" in proc.stdout
    executed = sorted(home.notebooks_out.glob("03_scheduled_evaluation-*.ipynb"))
    assert len(executed) == 2
    # The kernel is gone and never kept DuckDB open: a writer can open the store now.
    from engine.telemetry.store import TelemetryStore

    with TelemetryStore(home.telemetry_db) as store:
        assert store.summary()["points"] > 0


def test_unknown_parameter_is_refused_with_the_declared_ones(tmp_path: Path) -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'window_days'"):
        run_notebook(NOTEBOOKS / NAMES[2], {"window_day": 1}, home=Home.resolve(tmp_path))
