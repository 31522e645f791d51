"""The Detector protocol and the input checks every detector shares.

A detector is two verbs, ``fit`` and ``score`` (higher = more anomalous), plus sklearn's parameter
contract: ``__init__`` only stores parameters, ``get_params``/``set_params`` round-trip so a detector
can be rebuilt from the parameters logged in MLflow, and learned state ends in ``_``. Thresholds and
calibration are separate pieces (``engine.detectors.calibration``) so they can be retuned without
refitting.

``check_matrix`` is public so every detector family rejects bad input with the same messages;
``checked_input`` is the whole check a ``score`` starts with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from engine.errors import FeatureMismatchError, NotFittedError

__all__ = ["Detector", "as_matrix", "check_columns", "check_matrix", "checked_input"]


@runtime_checkable
class Detector(Protocol):
    """What the experiments, the NAB runner and the engine call on any detector.

    ``name`` is the registry name (``make_detector(det.name, det.get_params())`` rebuilds it).
    ``stateful`` says whether the detector keeps state between rows: a stateless one scores each
    row on its own (any batching, any order: one fitted model can serve many series), a stateful
    one (a forecaster, CUSUM) advances its state as it scores consecutive rows of *one* series.
    The stream detector's model slot, fitted once and shared by a role's series, takes stateless
    detectors only; spec loaders refuse the others there, naming the file and field.
    """

    name: str
    stateful: bool

    def fit(self, X: Any, feature_names: Sequence[str] | None = None) -> Detector:
        """Learn from rows of X (n_samples, n_features); returns self."""
        ...

    def score(self, X: Any) -> np.ndarray:
        """Raw anomaly scores, float64, shape (n_samples,), higher = more anomalous."""
        ...

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every constructor parameter with its current value."""
        ...

    def set_params(self, **params: Any) -> Detector:
        """Change parameters (validated at the next fit); returns self."""
        ...


def as_matrix(X: Any, feature_names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str] | None]:
    """X as a 2-D float64 array plus its column names (from a DataFrame's columns or ``feature_names``).

    Accepts numpy arrays and polars/pandas DataFrames, so callers can pass a feature frame directly
    and get the column check for free.
    """
    names = list(feature_names) if feature_names is not None else None
    columns = getattr(X, "columns", None)
    if columns is not None and not isinstance(X, np.ndarray):
        frame_names = [str(c) for c in columns]
        if names is not None and names != frame_names:
            raise FeatureMismatchError(
                f"feature_names {names} disagree with the DataFrame's columns {frame_names}",
                hint="pass one or the other",
            )
        names = frame_names
        X = X.to_numpy()
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FeatureMismatchError(
            f"X cannot be read as a float matrix: {exc}", hint="pass numeric features only"
        ) from exc
    if arr.ndim != 2:
        raise FeatureMismatchError(
            f"X must be 2-D (n_samples, n_features); got shape {arr.shape}",
            hint="reshape a single row with x.reshape(1, -1)",
        )
    if names is not None and len(names) != arr.shape[1]:
        raise FeatureMismatchError(
            f"{len(names)} feature names for {arr.shape[1]} columns", hint="give one name per column"
        )
    return arr, names


def check_matrix(
    X: Any,
    feature_names: Sequence[str] | None = None,
    *,
    who: str,
    default_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str] | None]:
    """``as_matrix`` plus the NaN/inf rejection, naming the offending columns.

    ``default_names`` (the names seen at fit) label the columns in the message when X has none.
    """
    arr, names = as_matrix(X, feature_names)
    labels_from = names or (
        list(default_names) if default_names and len(default_names) == arr.shape[1] else None
    )
    finite = np.isfinite(arr)
    if not finite.all():
        bad_cols = np.flatnonzero(~finite.all(axis=0))
        labels = [labels_from[i] if labels_from else f"column {i}" for i in bad_cols]
        n_rows = int((~finite.all(axis=1)).sum())
        raise FeatureMismatchError(
            f"{who}: X has NaN or inf in {n_rows} row(s), in {', '.join(labels)}",
            hint="drop or impute incomplete rows before fit/score (batch_features emits complete rows only)",
        )
    return arr, names


def check_columns(
    n_columns: int,
    names: list[str] | None,
    *,
    fitted_n: int,
    fitted_names: list[str] | None,
    who: str,
) -> None:
    """Reject scoring input whose columns differ from the fit (count, or names when both are known)."""
    if fitted_names is not None and names is not None and names != fitted_names:
        missing = [n for n in fitted_names if n not in names]
        extra = [n for n in names if n not in fitted_names]
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        if not parts:
            parts.append(f"order differs: got {names}, fitted on {fitted_names}")
        raise FeatureMismatchError(
            f"{who}: feature columns differ from fit: {'; '.join(parts)}",
            hint="build X with the same FeatureSpec (spec.feature_names order) as the training data",
        )
    if n_columns != fitted_n:
        fitted = f" ({', '.join(fitted_names)})" if fitted_names else ""
        raise FeatureMismatchError(
            f"{who}: X has {n_columns} feature column(s) but the detector was fitted on {fitted_n}{fitted}",
            hint="build X with the same FeatureSpec as the training data",
        )


def checked_input(det: Any, X: Any, feature_names: Sequence[str] | None = None) -> np.ndarray:
    """The preamble of every ``score``: X as a finite float matrix with the columns ``det`` was fitted on.

    ``det`` counts as fitted once it has ``n_features_in_`` (scikit-learn's convention; every
    detector here sets it only when its fit has succeeded). NaN/inf are reported with the fitted
    column names when X has none.
    """
    if not hasattr(det, "n_features_in_"):
        raise NotFittedError(f"{det.name} is not fitted yet", hint="call fit(X) before score(X)")
    arr, names = check_matrix(X, feature_names, who=det.name, default_names=det.feature_names_in_)
    check_columns(
        arr.shape[1], names, fitted_n=det.n_features_in_, fitted_names=det.feature_names_in_, who=det.name
    )
    return arr
