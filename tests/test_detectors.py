"""The PyOD adapter, the registry and persistence: messages, lookups and behaviour."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from engine.detectors import (
    Detector,
    available_detectors,
    load_detector,
    make_detector,
    register_detector,
    save_detector,
)
from engine.detectors.pyod_adapter import PYOD_MODULES, ROW_WISE, PyODDetector
from engine.errors import DetectorError, DetectorParamError, FeatureMismatchError, NotFittedError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(120, 3))


# -- parameter validation ------------------------------------------------------------------------


def test_contamination_message_has_sklearn_format(X: np.ndarray) -> None:
    det = make_detector("IForest", {"contamination": 0.7})
    with pytest.raises(DetectorParamError) as info:
        det.fit(X)
    assert info.value.message == (
        "The 'contamination' parameter of IForest must be a float in the range (0.0, 0.5]. Got 0.7 instead."
    )


def test_set_params_bypass_is_caught_at_fit(X: np.ndarray) -> None:
    """PyOD validates in __init__ only; set_params after a good fit must not slip through."""
    det = make_detector("HBOS").fit(X)
    det.set_params(n_bins=1)
    with pytest.raises(
        DetectorParamError,
        match=r"The 'n_bins' parameter of HBOS must be an int in the range "
        r"\[2, inf\) or a str among \{'auto'\}\. Got 1 instead\.",
    ):
        det.fit(X)


def test_unknown_parameter_suggests_the_close_one(X: np.ndarray) -> None:
    det = make_detector("KNN", {"n_neighbour": 3})
    with pytest.raises(DetectorParamError) as info:
        det.fit(X)
    assert info.value.message == "'n_neighbour' is not a parameter of KNN (did you mean 'n_neighbors'?)"
    assert info.value.hint is not None and "n_neighbors" in info.value.hint


def test_every_problem_is_reported_at_once(X: np.ndarray) -> None:
    det = make_detector("IForest", {"n_estimators": 0, "max_samples": 1.5, "bootstrapp": True})
    with pytest.raises(DetectorParamError) as info:
        det.fit(X)
    lines = info.value.message.splitlines()
    assert lines == [
        "The 'n_estimators' parameter of IForest must be an int in the range [1, inf). Got 0 instead.",
        "The 'max_samples' parameter of IForest must be a str among {'auto'}, an int in the range [1, inf) "
        "or a float in the range (0.0, 1.0]. Got 1.5 instead.",
        "'bootstrapp' is not a parameter of IForest (did you mean 'bootstrap'?)",
    ]


def test_bool_is_not_an_int_and_types_are_checked(X: np.ndarray) -> None:
    with pytest.raises(DetectorParamError, match="'n_neighbors' parameter of LOF must be an int"):
        make_detector("LOF", {"n_neighbors": True}).fit(X)
    with pytest.raises(DetectorParamError, match="'method' parameter of KNN must be a str among"):
        make_detector("KNN", {"method": "max"}).fit(X)


def test_n_neighbors_must_fit_the_training_rows(X: np.ndarray) -> None:
    with pytest.raises(DetectorParamError, match=r"smaller than the number of training rows \(10\)\. Got 20"):
        make_detector("LOF").fit(X[:10])


def test_pyod_constructor_rejection_becomes_param_error(X: np.ndarray) -> None:
    """A parameter without a declared constraint is still checked by PyOD; we wrap its error."""
    with pytest.raises(
        DetectorParamError, match=r"'support_fraction' parameter of MinCovDet must be a float"
    ):
        make_detector("MCD", {"support_fraction": 5.0}).fit(X)


def test_valid_knn_algorithm_does_not_warn(X: np.ndarray) -> None:
    """PyOD's KNN warns about a removal that never happened; the adapter silences exactly that."""
    det = make_detector("KNN", {"algorithm": "kd_tree"}).fit(X)
    assert det.score(X[:3]).shape == (3,)


# -- input checks ---------------------------------------------------------------------------------


def test_nan_error_names_the_column(X: np.ndarray) -> None:
    det = make_detector("HBOS").fit(X, feature_names=["cpu", "mem", "lat"])
    Y = X[:4].copy()
    Y[1, 2] = np.inf
    with pytest.raises(FeatureMismatchError, match=r"NaN or inf in 1 row\(s\), in lat"):
        det.score(Y)


def test_frame_columns_are_checked_by_name(X: np.ndarray) -> None:
    frame = pl.DataFrame(X, schema=["cpu", "mem", "lat"], orient="row")
    det = make_detector("KNN").fit(frame)
    assert det.feature_names_in_ == ["cpu", "mem", "lat"]
    np.testing.assert_array_equal(det.score(frame), det.score(X))
    with pytest.raises(FeatureMismatchError, match=r"order differs"):
        det.score(frame.select("mem", "cpu", "lat"))
    with pytest.raises(FeatureMismatchError, match=r"missing \['lat'\]; unexpected \['gpu'\]"):
        det.score(frame.rename({"lat": "gpu"}))
    with pytest.raises(
        FeatureMismatchError,
        match=r"2 feature column\(s\) but the detector was fitted on 3 "
        r"\(cpu, mem, lat\)",
    ):
        det.score(X[:, :2])


def test_one_dimensional_input_is_rejected(X: np.ndarray) -> None:
    det = make_detector("PCA").fit(X)
    with pytest.raises(FeatureMismatchError, match="must be 2-D"):
        det.score(X[0])
    assert det.score(X[:0]).shape == (0,)


def test_not_fitted(X: np.ndarray) -> None:
    with pytest.raises(NotFittedError, match="ECOD is not fitted"):
        make_detector("ECOD").score(X)


# -- batch independence ---------------------------------------------------------------------------


def test_raw_ecod_depends_on_the_batch_but_the_adapter_does_not(X: np.ndarray) -> None:
    """Why ROW_WISE exists: PyOD's ECOD scores a batch together with the training rows."""
    det = make_detector("ECOD").fit(X)
    Y = np.vstack([X[:5] + 4.0] * 4)
    raw_batch = det.estimator_.decision_function(Y)
    raw_single = det.estimator_.decision_function(Y[:1])
    assert raw_batch[0] < raw_single[0] - 0.5  # anomalies in one batch mask each other
    assert det.score(Y)[0] == pytest.approx(raw_single[0], rel=1e-12)
    assert "ECOD" in ROW_WISE and "COPOD" in ROW_WISE


def test_batch_only_classes_are_refused(X: np.ndarray) -> None:
    with pytest.raises(DetectorError, match="cannot score single rows"):
        make_detector("SOD").fit(X)


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch installed")
def test_missing_optional_extra_is_a_clear_error(X: np.ndarray) -> None:
    with pytest.raises(DetectorError, match="needs an optional package"):
        make_detector("DIF").fit(X)


# -- registry --------------------------------------------------------------------------------------


def test_pyod_module_map_matches_pyod_sources() -> None:
    """Every class deriving from PyOD's base detectors is in the map, under the module defining it."""
    spec = importlib.util.find_spec("pyod")
    assert spec is not None and spec.origin is not None
    found: dict[str, str] = {}
    for path in sorted((Path(spec.origin).parent / "models").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            bases = {getattr(b, "id", None) for b in node.bases} if isinstance(node, ast.ClassDef) else set()
            if (
                bases & {"BaseDetector", "BaseDeepLearningDetector"}
                and node.name != "BaseDeepLearningDetector"
            ):
                found.setdefault(node.name, path.stem)
    assert found == PYOD_MODULES


@pytest.mark.parametrize("name", ["IForest", "HBOS", "ECOD", "COPOD", "PCA", "KNN", "LOF"])
def test_builtin_names_resolve_to_pyod_classes(name: str) -> None:
    from pyod.models.base import BaseDetector

    det = make_detector(name)
    assert isinstance(det, Detector)
    module = importlib.import_module(f"pyod.models.{PYOD_MODULES[name]}")
    assert issubclass(getattr(module, name), BaseDetector)


def test_importing_detectors_does_not_import_pyod() -> None:
    code = "import sys, engine.detectors; print('pyod' in sys.modules, 'joblib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["False", "False"]


def test_unknown_detector_suggests_a_name() -> None:
    with pytest.raises(DetectorError, match=r"unknown detector 'Iforest' \(did you mean 'IForest'\?\)"):
        make_detector("Iforest")


def test_random_state_is_seeded_where_the_class_takes_it() -> None:
    assert make_detector("IForest").get_params()["random_state"] == 0
    assert make_detector("IForest", random_state=7).get_params()["random_state"] == 7
    assert make_detector("IForest", {"random_state": 3}, random_state=7).get_params()["random_state"] == 3
    assert "random_state" not in make_detector("HBOS").get_params()


def test_params_rebuild_through_the_registry(X: np.ndarray) -> None:
    det = make_detector("IForest", {"n_estimators": 20}, random_state=4).fit(X)
    again = make_detector(det.name, det.get_params()).fit(X)
    np.testing.assert_array_equal(det.score(X), again.score(X))


def test_third_party_detector_registers_like_pyod(X: np.ndarray) -> None:
    class Norm:
        """Distance from the training mean: the smallest possible third-party detector."""

        name = "test-norm"

        def __init__(self, scale: float = 1.0) -> None:
            self.scale = scale

        def fit(self, X, feature_names=None):
            self.mean_ = np.asarray(X).mean(axis=0)
            return self

        def score(self, X):
            return np.linalg.norm((np.asarray(X) - self.mean_) / self.scale, axis=1)

        def get_params(self, deep=True):
            return {"scale": self.scale}

        def set_params(self, **p):
            self.scale = p.get("scale", self.scale)
            return self

    register_detector("test-norm", lambda params, random_state: Norm(**params), replace=True)
    assert "test-norm" in available_detectors()
    assert {"IForest", "HBOS", "ECOD", "COPOD", "PCA", "KNN", "LOF"} <= set(available_detectors())
    det = make_detector("test-norm", {"scale": 2.0}).fit(X)
    assert det.score(np.zeros((1, 3)) + 10)[0] > det.score(X).max()
    with pytest.raises(DetectorError, match="already registered"):
        register_detector("test-norm", lambda params, random_state: Norm(**params))


# -- persistence -------------------------------------------------------------------------------------


def test_save_load_round_trip_keeps_params_and_scores(tmp_path: Path, X: np.ndarray) -> None:
    det = make_detector("COPOD").fit(X, feature_names=["a", "b", "c"])
    loaded = load_detector(save_detector(det, tmp_path / "sub" / "copod.joblib"))
    assert isinstance(loaded, PyODDetector)
    assert loaded.get_params() == det.get_params()
    assert loaded.feature_names_in_ == ["a", "b", "c"]
    np.testing.assert_array_equal(loaded.score(X), det.score(X))


def test_load_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(DetectorError, match="no saved detector there"):
        load_detector(tmp_path / "nope.joblib")
    junk = tmp_path / "junk.joblib"
    junk.write_text("not a pickle")
    with pytest.raises(DetectorError, match="cannot be read as a saved detector"):
        load_detector(junk)
    import pickle

    import skops.io as sio

    (tmp_path / "other.skops").write_bytes(sio.dumps({"something": 1}))
    with pytest.raises(DetectorError, match="not a selfheal detector file"):
        load_detector(tmp_path / "other.skops")
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Touch(str(marker))))
    with pytest.raises(DetectorError, match="cannot be read as a saved detector"):
        load_detector(tmp_path / "evil.pkl")  # a pickle is not read as one: no code runs
    assert not marker.exists()
    (tmp_path / "evil.skops").write_bytes(sio.dumps({"format": "selfheal-detector", "detector": _Touch("x")}))
    with pytest.raises(DetectorError, match=r"refusing to load types .*_Touch"):
        load_detector(tmp_path / "evil.skops")


class _Touch:
    """A pickle payload that creates a file when unpickled (it must never be)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        from pathlib import Path

        return (Path.touch, (Path(self.path),))


def test_constant_column_is_named_when_it_breaks_a_detector(X: np.ndarray) -> None:
    """PyOD's weighted PCA divides by a zero variance; we say which column instead of warning."""
    Y = X.copy()
    Y[:, 1] = 0.0
    with pytest.raises(
        DetectorError, match="non-finite scores on its training data; constant in the training data: err"
    ):
        make_detector("PCA").fit(Y, feature_names=["cpu", "err", "lat"])
    assert np.isfinite(make_detector("PCA", {"n_components": 2}).fit(Y).score(Y)).all()
    assert np.isfinite(make_detector("IForest", {"n_estimators": 10}).fit(Y).score(Y)).all()
