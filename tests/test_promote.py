"""Promotion: the champion/challenger gate on alias `champion`, --force with a reason, list, rollback."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from test_tracking_support import feature_frame

from engine import cli
from engine.detectors.pipeline import ScoringPipeline
from engine.errors import TrackingError
from engine.home import Home
from engine.tracking import registry
from engine.tracking.model import log_pipeline

NAME = ""


@pytest.fixture(autouse=True)
def _name(request: pytest.FixtureRequest) -> None:
    global NAME
    NAME = request.node.name.removeprefix("test_")[:60]


@pytest.fixture(scope="module")
def pipeline() -> ScoringPipeline:
    spec, frame = feature_frame(n=200)
    return ScoringPipeline(spec, "HBOS").fit(frame)


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow database for the module (creating one runs migrations: seconds); a model name per test."""
    home = Home.resolve(tmp_path_factory.mktemp("promote") / "home")
    uri = registry.resolve_tracking_uri(home)
    registry.ensure_experiment("gate", tracking_uri=uri, home=home)
    return uri


def _run(uri: str, pipeline: ScoringPipeline, f1: float, fingerprint: str = "fp1", metric: str = "f1") -> str:
    """A configuration run as the experiment runner logs it: model, metric, comparability tags."""
    registry.use_tracking(uri)
    exp = mlflow.get_experiment_by_name("gate")
    with mlflow.start_run(experiment_id=exp.experiment_id) as run:
        model_uri = log_pipeline(pipeline)
        mlflow.log_metrics({"f1": f1, "nab_score": 50.0})
        mlflow.set_tags(
            {
                registry.TAG_KIND: "config",
                registry.TAG_MODEL_URI: model_uri,
                registry.TAG_METRIC: metric,
                registry.TAG_HIGHER: "true",
                registry.TAG_FINGERPRINT: fingerprint,
                registry.TAG_EVAL_KEY: "key1",
            }
        )
    return run.info.run_id


def _champion(uri: str) -> str:
    return str(MlflowClient(uri).get_model_version_by_alias(NAME, "champion").version)


def test_gate_moves_champion_only_for_a_better_comparable_challenger(
    uri: str, pipeline: ScoringPipeline
) -> None:
    first = registry.promote(_run(uri, pipeline, 0.5), NAME, tracking_uri=uri)
    assert first.promoted and first.reason == "no champion yet" and _champion(uri) == first.version

    worse = registry.promote(_run(uri, pipeline, 0.4), NAME, tracking_uri=uri)
    assert not worse.promoted and "does not beat" in worse.reason
    assert _champion(uri) == first.version
    tags = MlflowClient(uri).get_model_version(NAME, worse.version).tags
    assert tags["selfheal.gate"].startswith("rejected")

    other_data = registry.promote(_run(uri, pipeline, 0.9, fingerprint="fp2"), NAME, tracking_uri=uri)
    assert (
        not other_data.promoted
        and "not comparable" in other_data.reason
        and "fingerprint" in other_data.reason
    )
    assert _champion(uri) == first.version

    better_id = _run(uri, pipeline, 0.7)
    better = registry.promote(better_id, NAME, tracking_uri=uri)
    assert better.promoted and better.champion_value == 0.5 and _champion(uri) == better.version
    again = registry.promote(better_id, NAME, tracking_uri=uri)  # idempotent: same version, no new one
    assert again.version == better.version and again.reason == "already the champion"


def test_force_needs_a_reason_and_is_recorded(uri: str, pipeline: ScoringPipeline) -> None:
    registry.promote(_run(uri, pipeline, 0.8), NAME, tracking_uri=uri)
    weak = _run(uri, pipeline, 0.1)
    with pytest.raises(TrackingError, match="reason"):
        registry.promote(weak, NAME, tracking_uri=uri, force=True)
    forced = registry.promote(weak, NAME, tracking_uri=uri, force=True, reason="hotfix for incident 42")
    assert forced.promoted and forced.forced and _champion(uri) == forced.version
    tags = MlflowClient(uri).get_model_version(NAME, forced.version).tags
    assert tags["selfheal.forced"] == "true" and tags["selfheal.force_reason"] == "hotfix for incident 42"


def test_rollback_walks_back_through_the_champion_history(uri: str, pipeline: ScoringPipeline) -> None:
    v1 = registry.promote(_run(uri, pipeline, 0.5), NAME, tracking_uri=uri).version
    v2 = registry.promote(_run(uri, pipeline, 0.6), NAME, tracking_uri=uri).version
    v3 = registry.promote(_run(uri, pipeline, 0.7), NAME, tracking_uri=uri).version
    assert registry.rollback(NAME, tracking_uri=uri).to_version == v2
    assert _champion(uri) == v2
    assert registry.rollback(NAME, tracking_uri=uri).to_version == v1
    with pytest.raises(TrackingError, match="no previous champion"):
        registry.rollback(NAME, tracking_uri=uri)
    rows = registry.list_versions(NAME, tracking_uri=uri)
    assert [r.version for r in rows] == [v1, v2, v3]
    assert rows[0].aliases == ["champion"] and rows[2].aliases == []
    assert rows[1].metrics["f1"] == 0.6
    assert "selfheal.rolled_back_at" in rows[2].tags


def test_sweep_run_id_stands_for_its_best_child(uri: str, pipeline: ScoringPipeline) -> None:
    child = _run(uri, pipeline, 0.6)
    registry.use_tracking(uri)
    exp = mlflow.get_experiment_by_name("gate")
    with mlflow.start_run(experiment_id=exp.experiment_id) as parent:
        mlflow.set_tags({registry.TAG_KIND: "sweep", registry.TAG_BEST_RUN: child})
    result = registry.promote(parent.info.run_id, NAME, tracking_uri=uri)
    assert result.run_id == child and result.promoted


def test_home_decides_when_no_uri_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = Home.resolve(tmp_path / "a"), Home.resolve(tmp_path / "b")
    registry.use_tracking(registry.resolve_tracking_uri(a))
    assert registry.resolve_tracking_uri(b) == b.tracking_uri  # MLflow's env export does not leak
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert registry.resolve_tracking_uri(b) == "http://127.0.0.1:5999"
    assert registry.resolve_tracking_uri(b, "sqlite:///x.db") == "sqlite:///x.db"


def test_unknown_run_is_a_clear_error(uri: str) -> None:
    with pytest.raises(TrackingError, match="not found"):
        registry.promote("0" * 32, NAME, tracking_uri=uri)


def test_cli_exit_codes_and_listing(
    uri: str, pipeline: ScoringPipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = _run(uri, pipeline, 0.6), _run(uri, pipeline, 0.2)

    def run(*args: str) -> int:
        with pytest.raises(SystemExit) as info:
            cli.main([*args, "--tracking-uri", uri])
        return int(info.value.code or 0)

    assert run("promote", good, "--name", NAME) == 0
    assert run("promote", bad, "--name", NAME) == 1
    assert "NOT PROMOTED" in capsys.readouterr().out
    assert run("promote", bad, "--name", NAME, "--force") == 2  # no reason: our error, exit 2
    assert "--force needs a reason" in capsys.readouterr().err
    assert run("promote", bad, "--name", NAME, "--force", "--reason", "drill") == 0
    assert run("models", "list", NAME) == 0
    out = capsys.readouterr().out
    assert "champion" in out and "forced: drill" in out
    assert run("models", "rollback", NAME) == 0
    assert "moved back from version 2 to 1" in capsys.readouterr().out
