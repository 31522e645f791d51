"""Calibration to [0, 1] and thresholds: monotone, bounded, serialisable, retunable."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.detectors import make_detector
from engine.detectors.calibration import (
    CALIBRATION_METHODS,
    FixedThreshold,
    QuantileThreshold,
    ScoreCalibrator,
    threshold_from_dict,
)
from engine.errors import DetectorParamError, NotFittedError

TRAIN = np.random.default_rng(0).gamma(2.0, size=500)


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_calibrated_scores_rank_like_raw_ones(method: str) -> None:
    cal = ScoreCalibrator(method).fit(TRAIN)
    raw = np.sort(np.concatenate([TRAIN, np.linspace(-5, 30, 200)]))
    out = cal.transform(raw)
    assert ((out >= 0) & (out <= 1)).all()
    assert (np.diff(out) >= 0).all(), "calibration must be monotone"


@pytest.mark.parametrize("method", ["ecdf", "gaussian"])
def test_smooth_methods_are_strictly_increasing_beyond_the_training_range(method: str) -> None:
    cal = ScoreCalibrator(method).fit(TRAIN)
    raw = np.linspace(TRAIN.min() - 2, TRAIN.max() + 2, 400)
    assert (np.diff(cal.transform(raw)) > 0).all()


def test_ecdf_values_by_hand() -> None:
    """Knots at (rank) / (n + 1); linear between; exponential tails scaled by the IQR."""
    cal = ScoreCalibrator("ecdf").fit([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(cal.transform([1.0, 2.5, 4.0]), [0.2, 0.5, 0.8])
    iqr = 3.25 - 1.75
    np.testing.assert_allclose(
        cal.transform([0.0, 5.0]), [0.2 * np.exp(-1 / iqr), 1 - 0.2 * np.exp(-1 / iqr)]
    )


def test_ecdf_knots_are_bounded() -> None:
    cal = ScoreCalibrator("ecdf", max_knots=50).fit(TRAIN)
    assert cal.knots_x_.size <= 50
    assert (np.diff(cal.transform(np.sort(TRAIN))) >= 0).all()


def test_constant_training_scores_do_not_break_calibration() -> None:
    for method in CALIBRATION_METHODS:
        out = ScoreCalibrator(method).fit(np.full(10, 3.0)).transform([2.0, 3.0, 4.0])
        assert np.isfinite(out).all() and (np.diff(out) >= 0).all() and out[0] < out[2], method


def test_a_subnormal_spread_counts_as_none() -> None:
    """Found by the property test below: a spread of 2e-311 overflowed the division."""
    for method in CALIBRATION_METHODS:
        cal = ScoreCalibrator(method).fit([0.0, 2.225073858507e-311])
        out = cal.transform([-1.0, 0.0, 1.0])
        assert np.isfinite(out).all() and (np.diff(out) >= 0).all() and out[0] < out[2], method


def test_interpolation_rounding_does_not_reverse_two_close_scores() -> None:
    """Found by the property test below: between knots -160789 and 0, the score -4.5e-24 was
    interpolated 1.1e-16 above the score 0.0."""
    cal = ScoreCalibrator("ecdf").fit([0.0, -160789.0])
    out = cal.transform([-4.510640566067735e-24, 0.0])
    assert out[0] <= out[1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=60),
    st.lists(st.floats(-1e7, 1e7), min_size=1, max_size=60),
    st.sampled_from(CALIBRATION_METHODS),
)
def test_monotone_property(train: list[float], probe: list[float], method: str) -> None:
    cal = ScoreCalibrator(method).fit(train)
    raw = np.sort(np.asarray(probe))
    out = cal.transform(raw)
    assert ((out >= 0) & (out <= 1)).all()
    assert (np.diff(out) >= 0).all()


def test_round_trip_through_json() -> None:
    for method in CALIBRATION_METHODS:
        cal = ScoreCalibrator(method).fit(TRAIN)
        again = ScoreCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
        np.testing.assert_array_equal(again.transform(TRAIN), cal.transform(TRAIN))


def test_calibrator_errors() -> None:
    with pytest.raises(
        DetectorParamError, match=re.escape("must be a str among {'ecdf', 'gaussian', 'minmax'}. Got 'rank'")
    ):
        ScoreCalibrator("rank").fit(TRAIN)
    with pytest.raises(NotFittedError):
        ScoreCalibrator().transform(TRAIN)
    with pytest.raises(DetectorParamError, match="NaN or inf"):
        ScoreCalibrator().fit([1.0, np.nan])


def test_quantile_threshold_learns_retunes_and_serialises() -> None:
    cal = ScoreCalibrator().fit(TRAIN)
    train = cal.transform(TRAIN)
    thr = QuantileThreshold(q=0.99).fit(train)
    assert thr.apply(train).mean() == pytest.approx(0.01, abs=0.004)
    assert thr.set_params(q=0.9).fit(train) is thr
    assert thr.apply(train).mean() == pytest.approx(0.1, abs=0.004)
    again = threshold_from_dict(json.loads(json.dumps(thr.to_dict())))
    assert again.threshold_ == thr.threshold_
    np.testing.assert_array_equal(again.apply(train), thr.apply(train))
    with pytest.raises(
        DetectorParamError,
        match=r"'q' parameter of QuantileThreshold must be a float in the "
        r"range \(0.0, 1.0\). Got 1.5 instead.",
    ):
        QuantileThreshold(1.5).fit(train)
    with pytest.raises(NotFittedError):
        QuantileThreshold().apply(train)


def test_fixed_threshold_is_strictly_above() -> None:
    thr = FixedThreshold(0.5)
    np.testing.assert_array_equal(thr.apply([0.4, 0.5, 0.6]), [False, False, True])
    thr.set_params(value=0.3)
    assert thr.threshold_ == 0.3
    assert threshold_from_dict(thr.to_dict()).threshold_ == 0.3
    with pytest.raises(DetectorParamError, match="finite float"):
        FixedThreshold(float("nan")).fit()


def test_detector_calibrator_threshold_chain_flags_an_outlier() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    det = make_detector("IForest", {"n_estimators": 30}).fit(X)
    cal = ScoreCalibrator().fit(det.train_scores_)
    thr = QuantileThreshold(0.99).fit(cal.transform(det.score(X)))
    flags = thr.apply(cal.transform(det.score(np.vstack([X[:5], [[6.0, 6.0, -6.0]]]))))
    assert flags.tolist() == [False] * 5 + [True]
