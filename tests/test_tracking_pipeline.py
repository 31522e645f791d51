"""The stream detector as the research loop uses it: batch scores, save/load, and its MLflow pyfunc."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
from test_tracking_support import fitted_detector, random_points, small_detector

from engine.detectors.artifact import load_detector_dir, save_detector_dir
from engine.errors import NotFittedError
from engine.home import Home
from engine.tracking import registry
from engine.tracking.model import load_logged_detector, log_detector, pip_requirements


def test_final_scores_threshold_and_alarms() -> None:
    det = fitted_detector(threshold={"kind": "quantile", "q": 0.95})
    scored = det.score_history(random_points(400, seed=5))
    scores = scored["score"].to_numpy()
    assert len(scored) > 0 and np.all((scores >= 0) & (scores <= 1))
    alarms = scored["anomalous"].to_numpy()
    assert alarms.dtype == bool and np.array_equal(alarms, scores > det.threshold_)
    assert 0 < alarms.mean() < 0.2


def test_online_points_score_exactly_like_the_batch() -> None:
    det = fitted_detector("IForest", params={"n_estimators": 20})
    points = random_points(300, seed=7)
    states: dict = {}
    rows = points.sort("ts", "service", "metric").with_columns(pl.col("ts").dt.epoch("us") / 1e6).iter_rows()
    online = det.score(rows, states) + det.flush(states)
    batch = det.score_history(points)
    assert sorted((s.service, round(s.ts * 1e6), s.score) for s in online) == sorted(
        zip(batch["service"], batch["ts"].dt.epoch("us"), batch["score"], strict=True)
    )


def test_save_load_round_trip_and_errors(tmp_path: Path) -> None:
    det = fitted_detector()
    save_detector_dir(det, tmp_path / "d")
    again = load_detector_dir(tmp_path / "d")
    points = random_points(200, seed=3)
    assert again.score_history(points).equals(det.score_history(points))
    assert again.threshold_ == det.threshold_
    assert (tmp_path / "d" / "detector.json").is_file()
    assert not list((tmp_path / "d").rglob("*.pkl"))  # no pickle anywhere: nothing runs code at load
    with pytest.raises(NotFittedError):
        small_detector().score_history(points)


@pytest.mark.slow  # creates an MLflow database (migrations) and loads the model through pyfunc
def test_pyfunc_scores_telemetry_with_explicit_requirements(tmp_path: Path) -> None:
    det = fitted_detector()
    home = Home.resolve(tmp_path / "home")
    uri = registry.resolve_tracking_uri(home)
    experiment_id = registry.ensure_experiment("pyfunc", tracking_uri=uri, home=home)
    with mlflow.start_run(experiment_id=experiment_id):
        model_uri = log_detector(det)
    model = mlflow.pyfunc.load_model(model_uri)
    points = random_points(200, seed=4)
    out = model.predict(points.to_pandas())
    want = det.score_history(points)
    np.testing.assert_array_equal(np.asarray(out["score"]), want["score"].to_numpy())
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "dl")))
    assert (local / "requirements.txt").read_text().split() == pip_requirements()
    assert (local / "artifacts" / "detector" / "detector.json").is_file()
    loaded = load_logged_detector(model_uri, tracking_uri=uri, dst=tmp_path / "dl2")
    assert loaded.threshold_ == det.threshold_
    assert str(home.mlflow_artifacts) in str(mlflow.get_experiment(experiment_id).artifact_location)
