"""`nab run` is the engine's online path: the stream detector, same features, same scores."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine.detectors import make_detector
from engine.detectors.likelihood import (
    AnomalyLikelihood,
    PostprocessParams,
    ScorePostprocessor,
    log_likelihood,
)
from engine.detectors.nab_zscore import NabZScore
from engine.detectors.stream import plan_series
from engine.errors import ConfigError, DetectorParamError, SpecError
from engine.evaluation.nab import NabCorpus, load_corpus, load_results
from engine.evaluation.streaming import (
    DEFAULT_SPEC,
    SPEC_DIR,
    DetectorSpec,
    epoch_seconds,
    load_detector_spec,
    nab_detector,
    parse_detector_spec,
    run_corpus,
    run_series,
    scores_per_row,
)
from engine.testing.detectors import CHECKS

START = datetime(2021, 3, 1)


def _series(n: int, seed: int, *, period: int = 12, shift_at: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 10 + 3 * np.sin(2 * np.pi * t / period) + rng.normal(0, 0.3, n)
    if shift_at is not None:
        x[shift_at:] += 6
    return np.round(x, 6)


def tiny_corpus(root: Path) -> Path:
    """Three 5-minute series: a level shift, a spike, and a quiet file without windows."""
    files = {
        "alpha/shift.csv": (_series(700, 1, shift_at=520), [(500, 540)]),
        "alpha/spike.csv": (_series(650, 2), [(430, 470)]),
        "beta/quiet.csv": (_series(600, 3), []),
    }
    files["alpha/spike.csv"][0][450] += 15
    windows = {}
    for key, (values, wins) in files.items():
        stamps = [
            (START + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(len(values))
        ]
        path = root / "data" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "timestamp,value\n" + "".join(f"{s},{v}\n" for s, v in zip(stamps, values, strict=True))
        )
        windows[key] = [[stamps[a], stamps[b]] for a, b in wins]
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return root


@pytest.fixture
def corpus(tmp_path: Path) -> NabCorpus:
    return load_corpus(tiny_corpus(tmp_path / "corpus"))


SEASONAL = parse_detector_spec(
    {**DEFAULT_SPEC.model_dump(), "name": "seasonal", "features": {"seasonal": {"period": "1h", "gate": 0.5}}}
)
MICRO = parse_detector_spec(
    {
        "name": "micro",
        "features": {"transforms": ["raw", {"kind": "zscore", "window": 20}], "seasonal": None},
        "refit": {"every": 7, "window": 50, "min_rows": 10},
        "postprocess": {"average": 5, "suppress_rows": 10},
    }
)


def point_by_point(
    spec: DetectorSpec, ts: np.ndarray, values: np.ndarray, warmup: int
) -> tuple[np.ndarray, float]:
    """The engine's path: one ``score`` call per point, then ``flush``."""
    det = nab_detector(spec)
    states = {"series": det.new_state("series", warmup_points=warmup)}
    scored = []
    for t, v in zip(ts, values, strict=True):
        scored.extend(det.score([(float(t), "series", "value", float(v))], states))
    scored.extend(det.flush(states))
    plan = states["series"].plan
    assert plan is not None
    return scores_per_row(ts, scored, plan[0]), plan[0]


@pytest.mark.parametrize("spec", [DEFAULT_SPEC, SEASONAL, MICRO], ids=["default", "seasonal", "micro-batch"])
def test_runner_results_equal_the_engine_online_path(
    corpus: NabCorpus, tmp_path: Path, spec: DetectorSpec
) -> None:
    result = run_corpus(corpus, spec, tmp_path / "out")
    name, written = load_results(tmp_path / "out", corpus)
    assert name == spec.name
    for key, series in corpus.series.items():
        online, _ = point_by_point(spec, epoch_seconds(series.timestamps), series.values, series.probation)
        np.testing.assert_array_equal(written[key], online)
        np.testing.assert_array_equal(result.scores[key], online)
        assert ((online >= 0) & (online <= 1)).all()


def test_chunked_pushes_give_the_same_scores(corpus: NabCorpus) -> None:
    series = corpus.series["alpha/shift.csv"]
    np.testing.assert_array_equal(run_series(MICRO, series), run_series(MICRO, series, chunk=37))


def test_seasonal_column_is_chosen_on_the_warm_up(corpus: NabCorpus) -> None:
    series = corpus.series["alpha/shift.csv"]
    ts = epoch_seconds(series.timestamps)[: series.probation]
    assert plan_series(SEASONAL.features, ts, series.values[: series.probation]) == (300.0, 12)
    noise = np.random.default_rng(0).normal(size=len(ts))
    assert plan_series(SEASONAL.features, ts, noise) == (300.0, None)


def test_no_look_ahead_scores_of_the_past_do_not_change(corpus: NabCorpus) -> None:
    series = corpus.series["alpha/spike.csv"]
    ts = epoch_seconds(series.timestamps)
    base, _ = point_by_point(SEASONAL, ts, series.values, series.probation)
    cut = 300
    future = series.values.copy()
    future[cut:] = future[cut:] * 3 + 50
    changed, _ = point_by_point(SEASONAL, ts, future, series.probation)
    np.testing.assert_array_equal(base[:cut], changed[:cut])
    assert not np.array_equal(base[cut:], changed[cut:])


def test_warm_up_rows_score_zero_and_the_planted_anomaly_ranks_first(corpus: NabCorpus) -> None:
    series = corpus.series["alpha/spike.csv"]
    scores = run_series(DEFAULT_SPEC, series)
    assert (scores[: series.probation] == 0).all()
    assert scores[450] == scores.max() == 1.0  # beyond the range seen so far: the spatial rule
    assert (scores[440:450] < 0.5).all()


def test_default_run_detects_the_tiny_corpus_windows(corpus: NabCorpus, tmp_path: Path) -> None:
    result = run_corpus(corpus, DEFAULT_SPEC, None)
    std = result.report.profiles["standard"]
    assert std.total.tp == 2 and std.total.fn == 0
    assert std.score > 80
    assert result.points_per_second > 0


# --- the spec ------------------------------------------------------------------------------------


def test_default_yaml_is_the_default_spec() -> None:
    assert load_detector_spec("default") == DEFAULT_SPEC
    assert load_detector_spec(SPEC_DIR / "default.yaml") == DEFAULT_SPEC
    assert load_detector_spec(None) == DEFAULT_SPEC


def test_every_shipped_spec_is_valid() -> None:
    for path in sorted(SPEC_DIR.glob("*.yaml")):
        assert load_detector_spec(path).name


def test_spec_errors_name_file_and_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "refit": {"every": 0, "windw": 3}}))
    with pytest.raises(SpecError) as info:
        load_detector_spec(bad)
    text = str(info.value)
    assert "refit.every" in text and "refit: unknown key 'windw'" in text and str(bad) in text
    with pytest.raises(ConfigError, match="neither a file nor a spec"):
        load_detector_spec("no-such-spec")
    with pytest.raises(SpecError, match="transforms"):
        parse_detector_spec({"features": {"transforms": [{"kind": "zscor", "window": 3}]}})
    json_spec = tmp_path / "s.json"
    json_spec.write_text(
        json.dumps({"name": "j", "detector": {"name": "NabZScore", "params": {"zscale": 2}}})
    )
    assert load_detector_spec(json_spec).detector.params == {"zscale": 2}


# --- detector and post-processing ------------------------------------------------------------------


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_nab_zscore_passes_the_conformance_suite(check) -> None:  # type: ignore[no-untyped-def]
    check(lambda: make_detector("NabZScore", {"zscale": 3.0}))


def test_nab_zscore_scores_max_abs_z_over_zscale() -> None:
    X = np.array([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]])  # column 1 is constant: no scale, z = 0
    det = NabZScore(zscale=2.0).fit(X)
    np.testing.assert_allclose(
        det.score(np.array([[2.0, 9.0], [2.0 + 1.632993161855452, 5.0], [100.0, 5.0]])), [0, 0.5, 1]
    )
    with pytest.raises(DetectorParamError, match="zscale"):
        NabZScore(zscale=-1).fit(X)
    with pytest.raises(DetectorParamError, match="did you mean 'zscale'"):
        make_detector("NabZScore", {"zscal": 1.0})


def test_likelihood_flags_a_jump_once_then_demotes_the_red_run() -> None:
    lik = AnomalyLikelihood(average=1, reestimate=10_000)
    rng = np.random.default_rng(0)
    for r in rng.uniform(0.0, 0.1, 200):
        assert lik.update(float(r), learning=True) == 0.5
    calm = [lik.update(float(r)) for r in rng.uniform(0.0, 0.1, 50)]
    assert max(calm) < 0.999
    first, second = lik.update(1.0), lik.update(1.0)
    assert first > 0.99999 and second == pytest.approx(1 - 1e-3)
    assert log_likelihood(0.5) == pytest.approx(0.0301029996659, abs=1e-10)
    assert log_likelihood(1 - 1e-5) == pytest.approx(0.5, abs=1e-6)


def test_postprocessor_spatial_rule_and_suppression() -> None:
    post = ScorePostprocessor(PostprocessParams(spatial_tolerance=0.05, suppress_rows=3, average=1))
    for v in np.linspace(0, 10, 50):
        assert post.update(0.0, [float(v)], warmup=True) == 0.0
    assert post.update(0.0, [5.0]) < 0.5
    assert post.update(0.0, [11.0]) == 1.0  # beyond max + 5% of the range
    assert post.update(0.0, [20.0]) == 0.3  # alarm again within 3 rows: capped
    for _ in range(3):
        post.update(0.0, [5.0])
    assert post.update(0.0, [40.0]) == 1.0  # suppression is over


@pytest.mark.nab
def test_real_nab_file_runner_equals_online_path(nab_corpus: Path) -> None:
    series = load_corpus(nab_corpus, categories=["artificialWithAnomaly"]).series[
        "artificialWithAnomaly/art_daily_jumpsup.csv"
    ]
    ts = epoch_seconds(series.timestamps)
    online, interval = point_by_point(DEFAULT_SPEC, ts, series.values, series.probation)
    np.testing.assert_array_equal(run_series(DEFAULT_SPEC, series), online)
    assert interval == 300.0
    assert plan_series(DEFAULT_SPEC.features, ts[: series.probation], series.values[: series.probation]) == (
        300.0,
        288,
    )
    ((first, last),) = series.windows
    assert online[first : last + 1].max() >= 0.5  # the jump is flagged inside its window
    assert (np.delete(online, np.arange(first, last + 1))[series.probation :] < 0.5).all()


def test_irregular_timestamps_gaps_and_repeats_keep_runner_equal_to_online(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    steps = rng.choice([0, 240, 300, 310, 900, 3600], size=900, p=[0.02, 0.2, 0.5, 0.2, 0.06, 0.02])
    ts = 1_600_000_000.0 + np.cumsum(steps).astype(float)
    values = rng.normal(50, 5, len(ts))
    values[700:] += 40
    for spec in (DEFAULT_SPEC, MICRO):
        online, interval = point_by_point(spec, ts, values, warmup=135)
        det = nab_detector(spec)
        states = {"s": det.new_state("s", warmup_points=135)}
        points = zip(ts.tolist(), ["s"] * len(ts), ["value"] * len(ts), values.tolist(), strict=True)
        batched = det.score(points, states) + det.flush(states)
        np.testing.assert_array_equal(scores_per_row(ts, batched, interval), online)
        assert interval == 300.0
        assert ((online >= 0) & (online <= 1)).all()
        assert online[700] >= 0.5  # the level shift


def test_a_series_shorter_than_its_warm_up_scores_zero() -> None:
    det = nab_detector(DEFAULT_SPEC)
    states = {"s": det.new_state("s", warmup_points=50)}
    ts = 1_600_000_000.0 + 300.0 * np.arange(10)
    assert det.score(((t, "s", "value", float(i)) for i, t in enumerate(ts)), states) == []
    scored = det.flush(states)
    assert len(scored) == 10 and all(s.score == 0.0 for s in scored)
