"""The stream detector: one artifact with explicit per-series state, held to the stream conformance
suite, online == batch as a property, metric groups, hostile values and refused rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.detectors.point_ensemble import available_point_detectors
from engine.detectors.stream import StreamDetector
from engine.detectors.stream_config import PointsConfig, StreamConfig
from engine.errors import DetectorError
from engine.testing.detectors import (
    STREAM_CHECKS,
    STREAM_START,
    check_stream,
    check_stream_far_value_scores_top,
    stream_config,
    stream_factory,
    stream_points,
)

MODELS = [
    ("IForest", {"n_estimators": 25}),
    ("HBOS", {}),
    ("PCA", {}),
    ("KNN", {}),
    ("LOF", {}),
    ("KMeansDistance", {"n_clusters": 4}),
    ("NabZScore", {}),
]


def _nab_factory() -> tuple[StreamDetector, pl.DataFrame]:
    """The NAB configuration (adaptive features, a model refitted per series), short warm-up."""
    from engine.evaluation.streaming import nab_detector

    spec = _nab_spec()
    points = stream_points(180, seed=4).filter(pl.col("metric") == "latency_ms")
    return nab_detector(spec), points.with_columns(pl.lit("value").alias("metric"))


def _cusum_per_series() -> tuple[StreamDetector, pl.DataFrame]:
    """A stateful detector is fine where each series gets its own model (refit)."""
    config = StreamConfig.model_validate(
        {
            "groups": [
                {
                    "name": "g",
                    "features": {"interval": "1m", "metrics": {"latency_ms": {"transforms": ["raw"]}}},
                }
            ],
            "model": {"class": "CUSUM", "params": {"reference": 30}},
            "refit": {"every": 25, "window": 60, "min_rows": 50},
            "threshold": {"kind": "fixed", "value": 0.9},
            "postprocess": {"squash": "ratio"},
        }
    )
    return StreamDetector(config), stream_points(240, seed=5)


ALL_POINTS = {"members": [{"name": n} for n in available_point_detectors()]}


def _nab_with_points() -> tuple[StreamDetector, pl.DataFrame]:
    """The NAB configuration with every point detector beside the model."""
    from engine.evaluation.streaming import nab_detector

    _, points = _nab_factory()
    spec = _nab_spec().model_copy(update={"points": PointsConfig.model_validate(ALL_POINTS)})
    return nab_detector(spec), points


def _nab_spec() -> Any:
    from engine.evaluation.streaming import DEFAULT_SPEC

    return DEFAULT_SPEC.model_copy(
        update={"features": DEFAULT_SPEC.features.model_copy(update={"warmup_points": 150})}
    )


_hbos_with_points = stream_factory(
    "HBOS", points={**ALL_POINTS, "columns": ["latency_ms__raw", "precision__raw"]}
)
_hbos_with_points.__name__ = "stream_HBOS_with_points"
_pca_sustained = stream_factory(
    "PCA", threshold={"kind": "quantile", "q": 0.98, "sustained": {"rows": 5, "q": 0.98}}
)
_pca_sustained.__name__ = "stream_PCA_sustained"
_nab_factory.__name__ = "stream_nab_default"
_nab_with_points.__name__ = "stream_nab_with_points"
_cusum_per_series.__name__ = "stream_cusum_per_series"
FACTORIES = [stream_factory(m, p) for m, p in MODELS] + [
    _hbos_with_points,
    _pca_sustained,
    _nab_factory,
    _nab_with_points,
    _cusum_per_series,
]


@pytest.mark.parametrize(
    ("factory", "check"),
    [pytest.param(f, c, id=f"{f.__name__}:{c.__name__}") for f in FACTORIES for c in STREAM_CHECKS],
)
def test_stream_conformance(factory: Any, check: Any) -> None:
    check(factory)


def test_check_stream_names_the_failing_check() -> None:
    """A detector without the spatial rule is not held to "far values score at the top" silently."""
    blind = stream_factory("HBOS", postprocess={"spatial_tolerance": None})
    with pytest.raises(AssertionError, match="check_stream_far_value_scores_top: a value of 1e308 scored"):
        check_stream(blind, [check_stream_far_value_scores_top])


# ------------------------------------------------------------------------------ online == batch


@pytest.fixture(scope="module")
def stateful_post() -> StreamDetector:
    """Every post-processing step on (likelihood, spatial rule, suppression, point detectors on
    every raw column): all of its state counts."""
    post = {
        "likelihood": True,
        "average": 3,
        "history": 40,
        "reestimate": 7,
        "spatial_tolerance": 0.2,
        "suppress_rows": 4,
    }
    members = [{"name": n} for n in available_point_detectors() if n != "SpectralResidual"]
    members.append({"name": "SpectralResidual", "params": {"window": 16, "z": 5}})  # scores in 90 rows
    config = stream_config("NabZScore", postprocess=post, points={"members": members})
    return StreamDetector(config).fit(stream_points(240, seed=1))


def _random_stream(draw: Any) -> list[tuple[float, str, str, float]]:
    """Interleaved series with gaps, repeated timestamps, missing metrics and huge values, each
    series in time order (as the engine sees a live feed)."""
    services = draw(
        st.lists(st.sampled_from(["svc-a", "svc-b", "retrieval-1"]), min_size=1, max_size=3, unique=True)
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    n = draw(st.integers(20, 90))
    out = []
    for service in services:
        t = 1_700_000_040.0 + float(rng.integers(0, 120))
        metrics = ["latency_ms", "memory"] + (["precision"] if service.startswith("retrieval") else [])
        for _ in range(n):
            t += float(rng.choice([0.0, 20.0, 20.0, 20.0, 60.0, 600.0]))
            for metric in metrics:
                if rng.random() < 0.05:
                    continue  # a missing point: its bucket is incomplete
                value = {"latency_ms": 100.0, "memory": 0.5, "precision": 0.9}[metric] * (
                    1 + rng.normal(0, 0.05)
                )
                if rng.random() < 0.01:
                    value = float(rng.choice([1e308, -1e308, 1e12]))
                out.append((t, service, metric, float(value)))
    order = np.argsort([p[0] for p in out], kind="stable")
    return [out[i] for i in order]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_online_equals_batch_with_post_processing_state(stateful_post: StreamDetector, data: Any) -> None:
    """Any chunking of a live stream, with a snapshot/restore of every state somewhere in it, scores
    exactly (bit for bit) what the batch execution scores on the same points."""
    det = stateful_post
    points = _random_stream(data.draw)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(points)), max_size=4)))
    restore_at = data.draw(st.sampled_from([None, *cuts])) if cuts else None
    states: dict[str, Any] = {}
    online = []
    start = 0
    for cut in [*cuts, len(points)]:
        online += det.score(points[start:cut], states)
        if cut == restore_at:
            states = {s: det.state_from_bytes(det.state_to_bytes(v)) for s, v in states.items()}
        start = cut
    online += det.flush(states)
    frame = pl.DataFrame(
        points, schema=["ts", "service", "metric", "value"], orient="row", schema_overrides={"ts": pl.Float64}
    )
    frame = frame.with_columns(pl.from_epoch((pl.col("ts") * 1e6).round().cast(pl.Int64), time_unit="us"))
    batch = det.score_history(frame)
    got = sorted((s.service, round(s.ts * 1e6), s.score) for s in online)
    want = sorted(zip(batch["service"], batch["ts"].dt.epoch("us"), batch["score"], strict=True))
    assert got == want


# ------------------------------------------------------------------------------ groups


def test_an_adaptive_detectors_events_carry_their_features_and_values() -> None:
    """In the engine's stages, a NAB-style (adaptive) series' anomaly events name the features
    that moved and carry the series' latest value, as a fixed group's events do."""
    from engine.runtime.events import EventMaker, Observations
    from engine.runtime.scoring import ScoringStage

    det, _ = _nab_factory()
    rng = np.random.default_rng(7)
    values = 10 + rng.uniform(-1, 1, 400)
    values[300] = 60.0  # beyond everything seen: the spatial rule scores it 1.0
    scoring = ScoringStage(det)
    events = EventMaker(
        detector=det.detector,
        threshold=det.threshold_,
        feature_names=det.feature_names,
        bundle_version="b",
        detector_version="d",
    )
    observations = Observations()
    anomalies = []
    for i, v in enumerate(values):
        scored = scoring.step([(0.0, [(1_699_999_800.0 + 300 * i, "nab-file", "value", float(v))])])
        observations.saw(scored, float(i))
        anomalies += events.step(scored, observations).events
    [spike] = anomalies
    assert spike.ts == 1_699_999_800.0 + 300 * 300 and spike.score == 1.0
    assert spike.features[0][0] == "value__raw" and spike.features[0][1] > 10
    assert spike.contributing == ("value",)
    assert spike.metrics == {"value": values[301]}  # the latest value when the row closed


def test_each_service_is_scored_on_the_groups_it_emits() -> None:
    det, points = stream_factory("HBOS")()
    assert det.role_for("svc-a") == "default" and det.role_for("retrieval-1") == "default+retrieval"
    scored = det.score_history(points)
    roles = dict(zip(scored["service"], scored["role"], strict=False))
    assert roles == {"svc-a": "default", "svc-b": "default", "retrieval-1": "default+retrieval"}
    assert det.role_features("default+retrieval") == (
        *det.group_features("default"),
        *det.group_features("retrieval"),
    )
    # a retrieval service's row is null in no column it has; others have no retrieval columns
    assert (
        scored.filter(pl.col("service") == "svc-a")["precision__raw"].null_count()
        == scored.filter(pl.col("service") == "svc-a").height
    )


def test_a_role_of_two_groups_is_calibrated_on_its_own_rows() -> None:
    """The largest of two calibrated group scores is above 0.5 on three healthy rows in four; the
    role's own calibration makes a score mean the same for every role (policies verify a remedy
    with "score below 0.5"), and the artifact keeps it."""
    from engine.detectors.artifact import from_files, to_files

    det, _ = stream_factory("PCA")()
    train = det.score_history(stream_points(360, seed=1))
    above = {
        role: float((train.filter(pl.col("role") == role)["score"] > 0.5).mean())
        for role in ("default", "default+retrieval")
    }
    assert 0.4 < above["default"] < 0.6 and 0.4 < above["default+retrieval"] < 0.6, above
    assert set(det.role_calibrations()) == {"default+retrieval"}
    again = from_files(to_files(det))
    held_out = stream_points(180, seed=2, start=STREAM_START + 6 * 3600)
    assert again.score_history(held_out).equals(det.score_history(held_out))


def test_a_precision_drop_is_caught_by_the_retrieval_group_only_where_it_exists() -> None:
    det, points = stream_factory("PCA")()
    late = pl.col("ts") > points["ts"].max() - pl.duration(minutes=40)
    stale = points.with_columns(
        pl.when(late & (pl.col("metric") == "precision"))
        .then(pl.col("value") - 0.2)
        .otherwise(pl.col("value"))
    )
    scored = det.score_history(stale).filter(pl.col("ts") > points["ts"].max() - pl.duration(minutes=30))
    assert scored.filter(pl.col("service") == "retrieval-1")["anomalous"].all()
    assert scored.filter(pl.col("service") != "retrieval-1")["anomalous"].mean() < 0.1


def test_services_no_group_matches_are_ignored_and_config_errors_are_clear() -> None:
    config = stream_config("HBOS")
    only_retrieval = config.model_copy(update={"groups": config.groups[1:]})
    det = StreamDetector(only_retrieval)
    assert det.role_for("svc-a") is None and det.new_state("svc-a").role is None
    bad = [
        ({"groups": [config.groups[0].model_dump(), config.groups[0].model_dump()]}, "names must be unique"),
        (
            {
                "groups": [
                    config.groups[0].model_dump(),
                    {**config.groups[1].model_dump(), "features": config.groups[0].features},
                ]
            },
            "metric 'memory' is in groups",
        ),
        ({"refit": {"every": 1}}, "takes one group"),
        ({"refit": {"every": 1}, "groups": config.groups[:1]}, "with `refit` use postprocess.squash"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            StreamConfig.model_validate({**config.model_dump(by_alias=True), **change})


def test_a_stateful_model_is_refused_where_it_would_be_shared() -> None:
    det = StreamDetector(stream_config("SeasonalResidual", {"season": 10}))
    with pytest.raises(DetectorError, match="keeps state between rows"):
        det.fit(stream_points(240))


def test_states_are_refused_across_detectors_and_when_corrupt() -> None:
    det, points = stream_factory("HBOS")()
    states: dict[str, Any] = {}
    det.score(list(points.with_columns(pl.col("ts").dt.epoch("us") / 1e6).iter_rows())[:500], states)
    blob = det.state_to_bytes(states["svc-a"])
    with pytest.raises(DetectorError, match="cannot be read"):
        det.state_from_bytes(blob[: len(blob) // 2])
    other = StreamDetector(stream_config("HBOS", groups=[stream_config("HBOS").groups[1]]))
    with pytest.raises(DetectorError, match="belongs to role 'default'"):
        other.state_from_bytes(blob)


# ------------------------------------------------------------------------------ sustained alarm


def test_a_run_of_high_scores_under_the_threshold_is_an_anomaly_when_sustained(tmp_path: Any) -> None:
    """``threshold.sustained``: a row is also anomalous when its score and its series' mean score
    over the last ``rows`` rows are above the bound fitted on the training rows' means (how a slow
    fault that dithers under the threshold, a latency creep, becomes persistent for the policies;
    a low row after high ones is not flagged: the mean outlives the fault). Online (with a
    snapshot and restore in the middle), batch and a saved artifact agree on every flag."""
    from engine.detectors.artifact import load_detector_dir, save_detector_dir

    sustained = {"kind": "quantile", "q": 0.98, "sustained": {"rows": 5, "q": 0.98}}
    det = StreamDetector(stream_config("PCA", threshold=sustained)).fit(stream_points(360, seed=1))
    train = det.score_history(stream_points(360, seed=1))
    means = train.sort("service", "ts").select(pl.col("score").rolling_mean(5).over("service")).drop_nulls()
    assert det.sustained_threshold_ == pytest.approx(float(np.quantile(means.to_series().to_numpy(), 0.98)))

    det.sustained_threshold_ = 0.7  # low enough that a few runs of middling scores cross it
    points = stream_points(180, seed=2, start=STREAM_START + 6 * 3600)
    batch = det.score_history(points).sort("service", "ts")
    mean = batch.select(pl.col("score").rolling_mean(5).over("service").fill_null(0.0)).to_series()
    score = batch["score"]
    sustained = (mean > 0.7) & (score > 0.7)
    assert (sustained & (score <= det.threshold_)).any(), "no row is flagged by the sustained alarm alone"
    assert ((mean > 0.7) & (score <= 0.7)).any(), "no low row after high ones: the test proves nothing"
    assert batch["anomalous"].to_list() == ((score > det.threshold_) | sustained).to_list()

    rows = list(points.with_columns(pl.col("ts").dt.epoch("us") / 1e6).iter_rows())
    states: dict[str, Any] = {}
    online = det.score(rows[: len(rows) // 2], states)
    states = {s: det.state_from_bytes(det.state_to_bytes(v)) for s, v in states.items()}
    online += det.score(rows[len(rows) // 2 :], states) + det.flush(states)
    got = sorted((s.service, round(s.ts * 1e6), s.anomalous) for s in online)
    want = sorted(zip(batch["service"], batch["ts"].dt.epoch("us"), batch["anomalous"], strict=True))
    assert got == want

    save_detector_dir(det, tmp_path / "det")
    loaded = load_detector_dir(tmp_path / "det")
    assert loaded.sustained_threshold_ == 0.7
    assert loaded.score_history(points).sort("service", "ts")["anomalous"].equals(batch["anomalous"])


def test_a_sustained_alarm_needs_training_scores() -> None:
    with pytest.raises(ValueError, match="sustained is a quantile of the training rows' scores"):
        stream_config("PCA", threshold={"kind": "fixed", "value": 0.9, "sustained": {"rows": 5}})
