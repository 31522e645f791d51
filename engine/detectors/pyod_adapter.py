"""PyOD behind the Detector protocol: any PyOD detector by class name, checked at fit.

PyOD's ``decision_function`` is the engine; this module wraps it, it does not fork it. What it adds:

* lookup by class name through ``PYOD_MODULES`` (name -> module under ``pyod.models``); PyOD is
  imported only when a detector is built, because importing one PyOD model costs ~1.5 s;
* parameter validation at fit (PyOD validates in ``__init__`` only, so ``set_params`` bypasses it),
  with scikit-learn's message format and "did you mean" for unknown names;
* NaN/inf and feature-column checks (``FeatureMismatchError`` naming the columns);
* batch independence: some PyOD detectors (ECOD, COPOD, ...) score a batch *together with* the
  training data, so a row's score depends on the other rows of the batch (in a batch of 1000 rows
  with 100 anomalous ones, ECOD's anomaly scores drop by a third: the anomalies mask each other).
  That is look-ahead in an evaluation and breaks online == batch. For those classes
  (``ROW_WISE``) every row is scored on its own, which is exactly what the live engine does;
* ``random_state`` seeded where the class takes it.

The module registers every PyOD class through ``register_detector``, as a third party would.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np

from engine.detectors.base import check_matrix, checked_input
from engine.detectors.core_constraints import (
    Bool,
    Constraint,
    InstanceOf,
    Interval,
    IsCallable,
    IsNone,
    Options,
    check_params,
)
from engine.detectors.registry import register_detector
from engine.errors import DetectorError, DetectorParamError

__all__ = ["PYOD_MODULES", "ROW_WISE", "PyODDetector"]

log = logging.getLogger(__name__)

PYOD_MODULES: dict[str, str] = {
    "ABOD": "abod",
    "AE1SVM": "ae1svm",
    "ALAD": "alad",
    "AnoGAN": "anogan",
    "AudioAE": "audio_ae",
    "AutoEncoder": "auto_encoder",
    "CBLOF": "cblof",
    "CD": "cd",
    "COF": "cof",
    "COPOD": "copod",
    "DeepSVDD": "deep_svdd",
    "DevNet": "devnet",
    "DIF": "dif",
    "ECOD": "ecod",
    "EmbeddingOD": "embedding",
    "MultiModalOD": "embedding",
    "FeatureBagging": "feature_bagging",
    "GMM": "gmm",
    "HBOS": "hbos",
    "HDBSCAN": "hdbscan",
    "IForest": "iforest",
    "INNE": "inne",
    "KDE": "kde",
    "KNN": "knn",
    "KPCA": "kpca",
    "LMDD": "lmdd",
    "LOCI": "loci",
    "LODA": "loda",
    "LOF": "lof",
    "LSCP": "lscp",
    "LUNAR": "lunar",
    "MAD": "mad",
    "MCD": "mcd",
    "MO_GAAL": "mo_gaal",
    "OCSVM": "ocsvm",
    "PCA": "pca",
    "ANOMALOUS": "pyg_anomalous",
    "AnomalyDAE": "pyg_anomalydae",
    "CoLA": "pyg_cola",
    "CONAD": "pyg_conad",
    "DOMINANT": "pyg_dominant",
    "GUIDE": "pyg_guide",
    "Radar": "pyg_radar",
    "SCAN": "pyg_scan",
    "QMCD": "qmcd",
    "RGraph": "rgraph",
    "ROD": "rod",
    "Sampling": "sampling",
    "SO_GAAL": "so_gaal",
    "SOD": "sod",
    "SOS": "sos",
    "SUOD": "suod",
    "AnomalyTransformer": "ts_anomaly_transformer",
    "KShape": "ts_kshape",
    "LSTMAD": "ts_lstm",
    "MatrixProfile": "ts_matrix_profile",
    "TimeSeriesOD": "ts_od",
    "SAND": "ts_sand",
    "SpectralResidual": "ts_spectral_residual",
    "VAE": "vae",
    "XGBOD": "xgbod",
}
"""PyOD detector class -> module under ``pyod.models`` (PyOD 2.x/3.x). A test checks it against the
classes PyOD's sources define, so an upgrade that adds or moves a detector fails loudly."""

ROW_WISE: frozenset[str] = frozenset({"ECOD", "COPOD", "LMDD", "LOCI", "RGraph", "ROD", "SOS", "CD"})
"""Classes whose ``decision_function`` depends on the other rows of the batch (measured on PyOD
3.6.7); the adapter scores their rows one at a time."""

BATCH_ONLY: frozenset[str] = frozenset({"SOD", "COF"})
"""Classes that score a batch relative to itself and fail on a single row: unusable online."""

_INT_GE1 = Interval(Integral, 1, None, "left")
_UNIT_OPEN_RIGHT = Interval(Real, 0, 1, "right")
_ALGORITHMS = Options(str, frozenset({"auto", "ball_tree", "kd_tree", "brute"}))

COMMON_CONSTRAINTS: dict[str, tuple[Constraint, ...]] = {
    "contamination": (Interval(Real, 0, 0.5, "right"),),
    "n_jobs": (Interval(Integral, None, None), IsNone()),
    "random_state": (Interval(Integral, 0, 2**32 - 1, "both"), IsNone()),
    "n_neighbors": (_INT_GE1,),
    "n_estimators": (_INT_GE1,),
    "leaf_size": (_INT_GE1,),
    "verbose": (Interval(Integral, 0, None, "left"), Bool()),
}
"""Constraints of parameters that mean the same in every PyOD class that has them."""

CLASS_CONSTRAINTS: dict[str, dict[str, tuple[Constraint, ...]]] = {
    "IForest": {
        "max_samples": (Options(str, frozenset({"auto"})), _INT_GE1, _UNIT_OPEN_RIGHT),
        "max_features": (_INT_GE1, _UNIT_OPEN_RIGHT),
        "bootstrap": (Bool(),),
        "behaviour": (Options(str, frozenset({"old", "new"})),),
    },
    "HBOS": {
        "n_bins": (Interval(Integral, 2, None, "left"), Options(str, frozenset({"auto"}))),
        "alpha": (Interval(Real, 0, 1, "neither"),),
        "tol": (Interval(Real, 0, 1, "neither"),),
    },
    "KNN": {
        "method": (Options(str, frozenset({"largest", "mean", "median"})),),
        "radius": (Interval(Real, 0, None, "neither"),),
        "algorithm": (_ALGORITHMS,),
        "metric": (InstanceOf(str), IsCallable()),
        "p": (Interval(Real, 0, None, "neither"),),
    },
    "LOF": {
        "algorithm": (_ALGORITHMS,),
        "p": (Interval(Real, 0, None, "neither"),),
        # novelty=False makes decision_function on new rows meaningless; the adapter scores new rows.
        "novelty": (Options(bool, frozenset({True})),),
    },
    "PCA": {
        "n_components": (
            _INT_GE1,
            Interval(Real, 0, 1, "neither"),
            Options(str, frozenset({"mle"})),
            IsNone(),
        ),
        "n_selected_components": (_INT_GE1, IsNone()),
        "copy": (Bool(),),
        "whiten": (Bool(),),
        "svd_solver": (Options(str, frozenset({"auto", "full", "arpack", "randomized", "covariance_eigh"})),),
        "tol": (Interval(Real, 0, None, "left"),),
        "iterated_power": (Interval(Integral, 0, None, "left"), Options(str, frozenset({"auto"}))),
        "weighted": (Bool(),),
        "standardization": (Bool(),),
    },
}

_QUIET_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # PyOD's KNN announces a removal "in version 0.7.6" that never happened; the option still works.
    (FutureWarning, r"algorithm parameter is deprecated"),
)


def _resolve(name: str) -> type:
    """Import the PyOD class lazily; unknown names and missing extras become DetectorError."""
    module = PYOD_MODULES.get(name)
    if module is None:
        raise DetectorError(
            f"{name!r} is not a PyOD detector", hint=f"known: {', '.join(sorted(PYOD_MODULES))}"
        )
    try:
        mod = importlib.import_module(f"pyod.models.{module}")
    except ImportError as exc:
        raise DetectorError(
            f"PyOD's {name} needs an optional package that is not installed: {exc}",
            hint="install the extra it names, or pick a detector without extras (IForest, HBOS, ECOD, ...)",
        ) from exc
    return getattr(mod, name)


def _signature_defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {
        k: (None if p.default is inspect.Parameter.empty else p.default)
        for k, p in params.items()
        if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


class PyODDetector:
    """One PyOD detector class by name; ``PyODDetector("IForest", n_estimators=200)``.

    ``__init__`` only stores parameters. ``get_params()`` returns every parameter of the PyOD class
    (defaults filled in), so the logged parameters rebuild the same detector even if PyOD changes a
    default. Learned state: ``estimator_`` (the fitted PyOD object), ``n_features_in_``,
    ``feature_names_in_`` and ``train_scores_`` (PyOD's scores of the training rows).
    """

    stateful: ClassVar[bool] = False  # each row is scored on its own

    def __init__(self, name: str, **params: Any) -> None:
        self.name = name
        self.params = params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"PyODDetector({self.name!r}{', ' if args else ''}{args})"

    # -- parameters -----------------------------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every parameter of the PyOD class with its current value (defaults filled in)."""
        try:
            defaults = _signature_defaults(_resolve(self.name))
        except DetectorError:
            defaults = {}
        return {**defaults, **self.params}

    def set_params(self, **params: Any) -> PyODDetector:
        """Update parameters; they are validated at the next ``fit`` (as in scikit-learn)."""
        self.params = {**self.params, **params}
        return self

    def validate_params(self) -> None:
        """Check the parameters now (``fit`` does this too); raises DetectorParamError."""
        if self.name in BATCH_ONLY:
            raise DetectorError(
                f"PyOD's {self.name} scores a batch relative to itself and cannot score single rows",
                hint="use it offline only, or pick KNN/LOF for a neighbourhood-based detector",
            )
        cls = _resolve(self.name)
        valid = _signature_defaults(cls)
        constraints = {**COMMON_CONSTRAINTS, **CLASS_CONSTRAINTS.get(self.name, {})}
        check_params(self.name, self.params, valid, constraints)

    # -- fit / score ----------------------------------------------------------------------------

    def _build(self) -> Any:
        cls = _resolve(self.name)
        with warnings.catch_warnings():
            for category, pattern in _QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern, category=category)
            try:
                return cls(**self.params)
            except (ValueError, TypeError) as exc:
                raise DetectorParamError(
                    f"PyOD's {self.name} rejected its parameters: {exc}",
                    hint=f"check the parameters of pyod.models.{PYOD_MODULES[self.name]}.{self.name}",
                ) from exc

    def fit(self, X: Any, feature_names: Sequence[str] | None = None) -> PyODDetector:
        """Validate parameters and input, then fit the PyOD detector; returns self."""
        self.validate_params()
        arr, names = check_matrix(X, feature_names, who=self.name)
        n_neighbors = self.get_params().get("n_neighbors")
        if isinstance(n_neighbors, Integral) and n_neighbors >= arr.shape[0]:
            raise DetectorParamError(
                f"The 'n_neighbors' parameter of {self.name} must be smaller than the number of "
                f"training rows ({arr.shape[0]}). Got {n_neighbors!r} instead.",
                hint="fit on more rows or lower n_neighbors",
            )
        if arr.shape[0] < 2:
            raise DetectorError(
                f"{self.name} needs at least 2 training rows, got {arr.shape[0]}",
                hint="fit on a longer history",
            )
        estimator = self._build()
        try:
            # Degenerate data (a constant column) makes some detectors divide by zero; numpy's warning
            # would be noise or, under filterwarnings=error, a crash. The finiteness check below says
            # what is wrong instead.
            with np.errstate(divide="ignore", invalid="ignore"):
                estimator.fit(arr)
        except (ValueError, np.linalg.LinAlgError) as exc:
            if type(exc).__name__ == "InvalidParameterError":  # scikit-learn's own check, inside PyOD
                raise DetectorParamError(
                    f"{self.name}: {exc}", hint=f"the PyOD {self.name} passes this parameter to scikit-learn"
                ) from exc
            raise DetectorError(
                f"PyOD's {self.name} failed to fit on X of shape {arr.shape}: {exc}",
                hint="check the parameters against the size of the training data",
            ) from exc
        train_scores = np.asarray(estimator.decision_scores_, dtype=np.float64)
        if not np.isfinite(train_scores).all():
            constant = np.flatnonzero(np.ptp(arr, axis=0) == 0)
            labels = [names[i] if names else f"column {i}" for i in constant]
            cause = f"; constant in the training data: {', '.join(labels)}" if labels else ""
            raise DetectorError(
                f"{self.name} produced non-finite scores on its training data{cause}",
                hint="drop constant feature columns (for PCA, or set n_components below the number of "
                "varying columns), or pick a detector that tolerates them (IForest, HBOS, ECOD, KNN)",
            )
        self.estimator_ = estimator
        self.train_scores_ = train_scores
        self.feature_names_in_ = names
        self.n_features_in_ = arr.shape[1]
        log.debug("fitted %s on %d rows x %d features", self.name, *arr.shape)
        return self

    def score(self, X: Any, feature_names: Sequence[str] | None = None) -> np.ndarray:
        """Raw scores from PyOD's ``decision_function``; float64, higher = more anomalous."""
        arr = checked_input(self, X, feature_names)
        if arr.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        decision = self.estimator_.decision_function
        with np.errstate(divide="ignore", invalid="ignore"):  # non-finite output is checked below
            if self.name in ROW_WISE:
                rows = [decision(arr[i : i + 1])[0] for i in range(arr.shape[0])]
                scores = np.array(rows, dtype=np.float64)
            else:
                scores = np.asarray(decision(arr), dtype=np.float64).reshape(-1)
        if not np.isfinite(scores).all():
            raise DetectorError(
                f"{self.name} produced {int((~np.isfinite(scores)).sum())} non-finite score(s)",
                hint="a feature is probably constant or degenerate in the training data; drop it",
            )
        return scores


def _factory(name: str) -> Callable[[dict[str, Any], int | None], PyODDetector]:
    """The registry factory of one PyOD class: seeds random_state where the class takes it."""

    def build(params: dict[str, Any], random_state: int | None) -> PyODDetector:
        det = PyODDetector(name, **params)
        if "random_state" not in params:
            try:
                takes_seed = "random_state" in _signature_defaults(_resolve(name))
            except DetectorError:  # missing optional extra: fit() reports it with the install hint
                takes_seed = False
            if takes_seed:
                det.set_params(random_state=random_state)
        return det

    build.__name__ = f"make_{name}"
    return build


for _name in PYOD_MODULES:
    register_detector(_name, _factory(_name))
