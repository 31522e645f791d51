"""ScoringPipeline (batch frames and online FeatureRows give the same scores) and its MLflow pyfunc."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from test_tracking_support import feature_frame, random_points

from engine.detectors.pipeline import ScoringPipeline
from engine.errors import FeatureMismatchError, NotFittedError
from engine.home import Home
from engine.tracking import registry
from engine.tracking.model import load_pipeline, log_pipeline, pip_requirements


def _fitted(detector: str = "HBOS", **threshold: float) -> tuple[ScoringPipeline, object]:
    spec, frame = feature_frame()
    pipe = ScoringPipeline(spec, detector, {}, threshold={"kind": "quantile", "q": 0.95, **threshold})
    return pipe.fit(frame), frame


def test_calibrated_scores_threshold_and_alarms() -> None:
    pipe, frame = _fitted()
    scores = pipe.score_frame(frame)
    assert scores.shape == (len(frame),)
    assert np.all((scores >= 0) & (scores <= 1))
    alarms = pipe.alarms(scores)
    assert alarms.dtype == bool and np.array_equal(alarms, scores > pipe.threshold_)
    assert 0 < alarms.mean() < 0.2


def test_online_rows_score_exactly_like_the_batch_frame() -> None:
    from engine.features import OnlineFeatures, batch_features

    spec, frame = feature_frame()
    pipe = ScoringPipeline(spec, "IForest", {"n_estimators": 20}).fit(frame)
    points = random_points()
    online = OnlineFeatures(spec)
    rows = []
    for ts, service, metric, value in points.sort("ts", "service", "metric").iter_rows():
        rows.extend(online.push(_epoch(ts), service, metric, value))
    rows.extend(online.flush())
    batch = batch_features(points, spec).sort("service", "ts")
    rows.sort(key=lambda r: (r.service, r.ts))
    assert len(rows) == len(batch)
    np.testing.assert_allclose(pipe.score_rows(rows), pipe.score_frame(batch), rtol=0, atol=1e-12)


def _epoch(ts) -> float:  # type: ignore[no-untyped-def]
    from datetime import datetime

    return (ts - datetime(1970, 1, 1)).total_seconds()


def test_save_load_round_trip_and_errors(tmp_path: Path) -> None:
    pipe, frame = _fitted()
    pipe.save(tmp_path / "p")
    again = ScoringPipeline.load(tmp_path / "p")
    np.testing.assert_array_equal(again.score_frame(frame), pipe.score_frame(frame))
    assert again.threshold_ == pipe.threshold_
    assert (tmp_path / "p" / "pipeline.json").is_file()
    with pytest.raises(FeatureMismatchError):
        pipe.score_frame(frame.drop(pipe.feature_names[0]))
    with pytest.raises(FeatureMismatchError):
        pipe.score_matrix(np.zeros((3, 2)))
    with pytest.raises(NotFittedError):
        ScoringPipeline(pipe.feature_spec, "HBOS").score_matrix(np.zeros((1, len(pipe.feature_names))))


@pytest.mark.slow  # creates an MLflow database (migrations) and loads the model through pyfunc
def test_pyfunc_returns_calibrated_scores_with_explicit_requirements(tmp_path: Path) -> None:
    pipe, frame = _fitted()
    home = Home.resolve(tmp_path / "home")
    uri = registry.resolve_tracking_uri(home)
    experiment_id = registry.ensure_experiment("pyfunc", tracking_uri=uri, home=home)
    with mlflow.start_run(experiment_id=experiment_id):
        model_uri = log_pipeline(pipe)
    model = mlflow.pyfunc.load_model(model_uri)
    df = frame.to_pandas()  # extra columns ts/service are ignored
    scores = np.asarray(model.predict(df))
    np.testing.assert_allclose(scores, pipe.score_frame(frame), rtol=0, atol=1e-12)
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "dl")))
    assert (local / "requirements.txt").read_text().split() == pip_requirements()
    assert (local / "artifacts" / "pipeline" / "feature_spec.yaml").is_file()
    loaded = load_pipeline(model_uri, tracking_uri=uri, dst=tmp_path / "dl2")
    assert loaded.threshold_ == pipe.threshold_
    assert str(home.mlflow_artifacts) in str(mlflow.get_experiment(experiment_id).artifact_location)
