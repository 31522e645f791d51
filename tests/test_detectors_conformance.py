"""Every check of the library's conformance suite on every built-in PyOD detector."""

from __future__ import annotations

import numpy as np
import pytest

from engine.detectors import make_detector
from engine.testing.detectors import CHECKS, check_detector, check_online_equals_batch

BUILTIN = ["IForest", "HBOS", "ECOD", "COPOD", "PCA", "KNN", "LOF"]


def _factory(name: str):
    def build():
        return make_detector(name, {"n_estimators": 25} if name == "IForest" else None, random_state=0)

    build.__name__ = f"make_{name}"
    return build


@pytest.mark.parametrize(
    ("factory", "check"),
    [
        pytest.param(_factory(name), check, id=f"{name}:{check.__name__}")
        for name in BUILTIN
        for check in CHECKS
    ],
)
def test_conformance(factory, check) -> None:
    check(factory)


def test_check_detector_names_the_failing_check() -> None:
    """check_detector runs the whole suite and says which check failed for a broken detector."""

    class NoSelf:
        name = "NoSelf"

        def fit(self, X, feature_names=None):
            return None

        def score(self, X):
            return X[:, 0]

        def get_params(self, deep=True):
            return {}

        def set_params(self, **p):
            return self

    with pytest.raises(AssertionError, match="check_fit_returns_self: fit\\(\\) must return self"):
        check_detector(NoSelf)
    check_detector(_factory("HBOS"))


def test_online_check_catches_a_batch_dependent_detector() -> None:
    """A detector that scores rows against the batch mean (like raw PyOD ECOD) fails the check."""

    class BatchRelative:
        name = "BatchRelative"

        def fit(self, X, feature_names=None):
            self.n_features_ = np.asarray(X).shape[1]
            return self

        def score(self, X):
            X = np.asarray(X, dtype=np.float64)
            return np.linalg.norm(X - X.mean(axis=0), axis=1)

        def get_params(self, deep=True):
            return {}

        def set_params(self, **p):
            return self

    with pytest.raises(AssertionError, match="batch differ from row-by-row"):
        check_online_equals_batch(BatchRelative)
