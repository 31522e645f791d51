"""The detector conformance suite, shipped in the library (in the style of ``river.checks``).

Every check takes a *factory* (a zero-argument callable returning a fresh, seeded, unfitted
detector) and raises ``AssertionError`` saying what is wrong. A detector family proves it honours
the Detector protocol with one parametrised test::

    @pytest.mark.parametrize("factory, check", [
        pytest.param(factory, check, id=f"{name}:{check.__name__}") for check in CHECKS
    ])
    def test_conformance(factory, check):
        check(factory)

Data is small (a few hundred rows, 3 features) so the whole suite runs in seconds per detector.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from engine.detectors.base import Detector
from engine.detectors.persistence import load_detector, save_detector
from engine.errors import FeatureMismatchError, NotFittedError

__all__ = [
    "CHECKS",
    "DetectorFactory",
    "check_detector",
    "check_fit_returns_self",
    "check_not_fitted",
    "check_online_equals_batch",
    "check_params_roundtrip",
    "check_planted_outlier",
    "check_rejects_nonfinite",
    "check_rejects_wrong_columns",
    "check_save_load_identical",
    "check_score_shape_dtype",
    "check_seeded_identical",
]

DetectorFactory = Callable[[], Detector]

FEATURES = ["f0", "f1", "f2"]


def _data(n: int = 160, seed: int = 7) -> np.ndarray:
    """Correlated normal rows: a little structure so every family has something to learn."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1))
    return np.hstack([base + 0.3 * rng.normal(size=(n, 1)) for _ in FEATURES])


def _fitted(factory: DetectorFactory) -> tuple[Detector, np.ndarray]:
    X = _data()
    return factory().fit(X, feature_names=FEATURES), X


def check_fit_returns_self(factory: DetectorFactory) -> None:
    det = factory()
    out = det.fit(_data(), feature_names=FEATURES)
    assert out is det, f"fit() must return self, returned {out!r}"


def check_not_fitted(factory: DetectorFactory) -> None:
    try:
        factory().score(_data(5))
    except NotFittedError:
        return
    raise AssertionError("score() before fit() must raise engine.errors.NotFittedError")


def _expect_mismatch(action: Callable[[], object], what: str) -> None:
    try:
        action()
    except FeatureMismatchError:
        return
    raise AssertionError(f"{what} must raise engine.errors.FeatureMismatchError")


def check_rejects_nonfinite(factory: DetectorFactory) -> None:
    det, X = _fitted(factory)
    for bad in (np.nan, np.inf, -np.inf):
        Y = X[:10].copy()
        Y[3, 1] = bad
        _expect_mismatch(lambda Y=Y: det.score(Y), f"score() with {bad} in X")
        _expect_mismatch(lambda Y=Y: factory().fit(Y), f"fit() with {bad} in X")


def check_rejects_wrong_columns(factory: DetectorFactory) -> None:
    det, X = _fitted(factory)
    _expect_mismatch(lambda: det.score(X[:5, :2]), "score() with fewer columns than fit")
    _expect_mismatch(lambda: det.score(np.hstack([X[:5], X[:5, :1]])), "score() with more columns than fit")
    try:
        import polars as pl
    except ImportError:  # pragma: no cover - polars is a dependency
        return
    renamed = pl.DataFrame(X[:5], schema=["f0", "f1", "other"], orient="row")
    _expect_mismatch(lambda: det.score(renamed), "score() of a frame with other column names")


def check_score_shape_dtype(factory: DetectorFactory) -> None:
    det, X = _fitted(factory)
    scores = det.score(X[:17])
    assert isinstance(scores, np.ndarray), f"score() must return a numpy array, got {type(scores)}"
    assert scores.shape == (17,), f"score() of 17 rows must have shape (17,), got {scores.shape}"
    assert scores.dtype == np.float64, f"score() must return float64, got {scores.dtype}"
    assert np.isfinite(scores).all(), "score() returned non-finite values"


def check_seeded_identical(factory: DetectorFactory) -> None:
    X = _data()
    a = factory().fit(X, feature_names=FEATURES).score(X)
    b = factory().fit(X, feature_names=FEATURES).score(X)
    np.testing.assert_array_equal(a, b, err_msg="two seeded fits on the same data must score identically")


def check_save_load_identical(factory: DetectorFactory) -> None:
    det, X = _fitted(factory)
    before = det.score(X)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_detector(save_detector(det, Path(tmp) / "det.joblib"))
    np.testing.assert_array_equal(loaded.score(X), before, err_msg="scores changed after save/load")


def check_planted_outlier(factory: DetectorFactory) -> None:
    det, X = _fitted(factory)
    outlier = np.array([[8.0, -8.0, 8.0]])
    scores = det.score(np.vstack([X, outlier]))
    assert scores[-1] > np.median(scores[:-1]), (
        f"a planted outlier scored {scores[-1]:.4g}, not above the median {np.median(scores[:-1]):.4g}"
    )


def check_params_roundtrip(factory: DetectorFactory) -> None:
    """get_params -> set_params on a fresh detector rebuilds it: same params, same scores."""
    det = factory()
    params = det.get_params()
    other = factory()
    assert other.set_params(**params) is other, "set_params() must return self"
    assert other.get_params() == params, "get_params() after set_params(**get_params()) changed"
    X = _data()
    np.testing.assert_array_equal(
        det.fit(X, feature_names=FEATURES).score(X),
        other.fit(X, feature_names=FEATURES).score(X),
        err_msg="a detector rebuilt from get_params() scores differently",
    )


def check_online_equals_batch(factory: DetectorFactory) -> None:
    """Scoring rows one at a time, in order, equals scoring them in one batch (no look-ahead).

    Each way runs on its own copy of the fitted detector, so a detector that updates state while
    scoring (a forecaster) is held to the same rule: the live engine's row-by-row scores are the
    scores an offline evaluation saw. For a stateless detector it means a row's score does not depend
    on the other rows of the batch.
    """
    det, X = _fitted(factory)
    Y = np.vstack([X[:6], X[:6] + 5.0])
    batch = copy.deepcopy(det).score(Y)
    online = copy.deepcopy(det)
    single = np.concatenate([online.score(Y[i : i + 1]) for i in range(Y.shape[0])])
    np.testing.assert_allclose(
        batch, single, rtol=1e-9, atol=1e-12, err_msg="scores of a batch differ from row-by-row scores"
    )


CHECKS: list[Callable[[DetectorFactory], None]] = [
    check_fit_returns_self,
    check_not_fitted,
    check_rejects_nonfinite,
    check_rejects_wrong_columns,
    check_score_shape_dtype,
    check_seeded_identical,
    check_save_load_identical,
    check_planted_outlier,
    check_params_roundtrip,
    check_online_equals_batch,
]
"""Every check a registered detector must pass."""


def check_detector(
    factory: DetectorFactory, checks: Sequence[Callable[[DetectorFactory], None]] = CHECKS
) -> None:
    """Run every check; the first failure raises AssertionError prefixed with the check's name."""
    for check in checks:
        try:
            check(factory)
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__}: {exc}") from exc
