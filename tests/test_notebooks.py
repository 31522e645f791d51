"""The research notebooks: thin, parameterised, and executed for real through papermill."""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nbformat
import pytest
from test_tracking_support import SMALL_FEATURES, make_home, small_spec, write_spec

from engine.home import Home
from engine.tracking import registry
from engine.tracking.notebooks import coerce, declared_parameters, run_notebook

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = (
    "01_explore_telemetry.ipynb",
    "02_tune_detector.ipynb",
    "03_scheduled_evaluation.ipynb",
    "04_outcomes.ipynb",
)


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
    client = registry.tracking_client(home.tracking_uri)
    exp = client.get_experiment_by_name("notebook-tuning")
    assert exp is not None and client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_scheduled_evaluation_passes_then_fails_below_the_bar(champion_home: tuple[Home, Path]) -> None:
    home, _ = champion_home
    nb = NOTEBOOKS / NAMES[2]
    ok = run_notebook(nb, {"model_name": "nb-model", "window_days": 1.0, "min_quality": 0.0}, home=home)
    assert ok.ok, ok.error
    client = registry.tracking_client(home.tracking_uri)
    run = client.get_run(ok.run_id)
    assert run.info.status == "FINISHED" and "f1" in run.data.metrics
    assert run.data.tags["selfheal.model_name"] == "nb-model"
    assert [a.path for a in client.list_artifacts(ok.run_id, "notebook")] == [f"notebook/{ok.output.name}"]
    # what the champion was promoted on: the gate's verdict and table, from the version's tags
    executed = nbformat.read(ok.output, as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "models:/nb-model@champion = version 1: promoted: no champion yet; never assessed" in printed
    assert "criterion" in printed and "false alarms/day" in printed and "detection delay (s)" in printed

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


# ------------------------------------------------------- every parameter settable from the command line

#: The parameters each shipped notebook declares; the slow test below sets every one of them through
#: `selfheal evaluate -p NAME VALUE` and checks its effect. A new parameter must be added to both.
PARAMETERS = {
    NAMES[0]: {"home", "services", "last_days", "metrics"},
    NAMES[1]: {"home", "tracking_uri", "detector", "params", "services", "start", "end", "train_fraction",
               "threshold_q", "features_from"},
    NAMES[2]: {"home", "tracking_uri", "model_name", "alias", "window_days", "metric", "min_quality",
               "mlflow_run_id"},
    NAMES[3]: {"home", "policies"},  # both take effect: tests/test_outcomes.py
}  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_papermill_reads_every_parameter_the_cell_declares(name: str) -> None:
    assert set(declared_parameters(NOTEBOOKS / name)) == PARAMETERS[name]


def test_a_parameters_cell_papermill_cannot_read_is_refused_naming_the_line(tmp_path: Path) -> None:
    from engine.errors import ConfigError

    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "selfheal", "display_name": "selfheal", "language": "python"}}
    )
    cell = nbformat.v4.new_code_cell("home = None\nservices = None  # None = all services\nlast_days = 3.0")
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(ConfigError, match=r"cannot read the parameters cell's line 2: services") as info:
        declared_parameters(path)
    assert "no '=' inside the comment" in (info.value.hint or "")


def _evaluate(home: Path, name: str, params: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], Any]:
    """`selfheal --home HOME evaluate NOTEBOOK -p NAME VALUE ...` as typed; the executed copy."""
    assert set(params) == PARAMETERS[name]
    pairs = [arg for key, value in params.items() for arg in ("-p", key, value)]
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--home", str(home), "evaluate", str(NOTEBOOKS / name), *pairs],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    found = re.search(r"executed copy: (\S+\.ipynb)", proc.stdout)
    assert found, proc.stdout + proc.stderr[-3000:]
    return proc, nbformat.read(found.group(1), as_version=4)


def _text(cell: Any) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _png_size(cell: Any) -> tuple[int, int]:
    png = base64.b64decode(
        next(o for o in cell.outputs if "image/png" in o.get("data", {}))["data"]["image/png"]
    )
    width, height = struct.unpack(">II", png[16:24])
    return width, height


@pytest.mark.slow
def test_every_parameter_of_the_explore_notebook_takes_effect(
    champion_home: tuple[Home, Path], tmp_path: Path
) -> None:
    home, _ = champion_home
    proc, nb = _evaluate(
        tmp_path / "empty-home",  # the data comes from -p home
        NAMES[0],
        {"home": str(home.root), "services": "[gateway]", "last_days": "1", "metrics": "[cpu_util]"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "[IPKernelApp]" not in proc.stderr  # no "Kernel is running over TCP without encryption"
    code = [c for c in nb.cells if c.cell_type == "code"]
    loaded = _text(code[2])
    points, first, last = re.search(
        r"([\d,]+) points, .* incidents, (\S+ \S+) \.\. (\S+ \S+)", loaded
    ).groups()
    assert int(points.replace(",", "")) > 0
    assert datetime.fromisoformat(last) - datetime.fromisoformat(first) <= timedelta(days=1)
    table = _text(code[3])
    assert "gateway" in table and "inference-a" not in table
    width, height = _png_size(code[5])
    assert width / height > 3, (width, height)  # one panel (11 x 2.5 in), not four (11 x 8.2 in)


@pytest.mark.slow
def test_every_parameter_of_the_tune_notebook_takes_effect(
    champion_home: tuple[Home, Path], tmp_path: Path
) -> None:
    home, features = champion_home
    uri = f"sqlite:///{tmp_path / 'tuning.db'}"
    proc, nb = _evaluate(
        tmp_path / "empty-home",
        NAMES[1],
        {
            "home": str(home.root),
            "tracking_uri": uri,
            "detector": "HBOS",
            "params": "{n_bins: 7}",
            "services": "[gateway, inference-a]",
            "start": "2026-01-05T12:00:00",
            "end": "2026-01-07T12:00:00",
            "train_fraction": "0.6",
            "threshold_q": "0.97",
            "features_from": str(features),
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    run_id = re.search(r"MLflow run: (\w+)", "".join(_text(c) for c in nb.cells if c.cell_type == "code"))
    assert run_id
    client = registry.tracking_client(uri)
    child = client.get_run(run_id.group(1))  # logged where tracking_uri points
    assert child.data.params["detector"] == "HBOS" and child.data.params["param.n_bins"] == "7"
    assert json.loads(child.data.params["threshold_policy"])["q"] == 0.97
    inputs = Path(client.download_artifacts(child.data.tags["mlflow.parentRunId"], "inputs", str(tmp_path)))
    data = json.loads((inputs / "data_fingerprint.json").read_text())
    assert (
        data["data"]["services"] == ["gateway", "inference-a"]
        and data["services"] == data["data"]["services"]
    )
    assert data["data"]["start"].startswith("2026-01-05T12:00") and data["data"]["end"].startswith(
        "2026-01-07T12"
    )
    start, end, cut = (datetime.fromisoformat(data[k]) for k in ("start", "end", "test_start"))
    assert abs((cut - start) / (end - start) - 0.6) < 0.05
    spec_text = "".join(p.read_text() for p in inputs.iterdir() if p.name != "data_fingerprint.json")
    assert "memory_util" in spec_text and "request_rate" not in spec_text  # features_from's spec


@pytest.mark.slow
def test_every_parameter_of_the_scheduled_evaluation_takes_effect(
    champion_home: tuple[Home, Path], tmp_path: Path
) -> None:
    home, _ = champion_home
    client = registry.tracking_client(home.tracking_uri)
    client.set_registered_model_alias("nb-model", "candidate", "1")
    preset = client.create_run(client.create_experiment("preset")).info.run_id
    proc, nb = _evaluate(
        tmp_path / "empty-home",
        NAMES[2],
        {
            "home": str(home.root),
            "tracking_uri": home.tracking_uri,
            "model_name": "nb-model",
            "alias": "candidate",
            "window_days": "1",
            "metric": "precision",
            "min_quality": "1.5",
            "mlflow_run_id": preset,
        },
    )
    assert proc.returncode == 1  # the quality gate, on precision against 1.5
    assert re.search(r"QualityGateError: quality gate failed: precision = [\d.]+ < 1.5", proc.stdout), (
        proc.stdout
    )
    shown = "".join(_text(c) for c in nb.cells if c.cell_type == "code")
    found = re.search(r"models:/nb-model@candidate = version 1; window (\S+ \S+) \.\. (\S+ \S+);", shown)
    assert found, shown
    first, last = (datetime.fromisoformat(t) for t in found.groups())
    assert abs(last - first - timedelta(days=1)) < timedelta(seconds=1)
    run = client.get_run(preset)
    assert "precision" in run.data.metrics and run.data.params["window_days"] == "1"
    assert run.data.tags["selfheal.model_name"] == "nb-model"
