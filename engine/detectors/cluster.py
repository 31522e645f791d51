"""Clustering of service state: a row is anomalous when it is far from every usual *combination*.

A service's metrics move together (load drives request rate, CPU, queue depth and latency at once),
so its normal states lie on a few clusters in metric space. A row whose metrics are each inside
their usual range can still sit between the clusters (high request rate with idle CPU): per-metric
detectors miss it, a distance to the nearest cluster does not.

``KMeansDistance``: standardise the columns (median/IQR by default: one noisy metric must not
dominate, and its raw units (requests/s vs fractions) must not either), k-means on the training
rows, and score = distance to the nearest centroid divided by that cluster's typical radius (the
median distance of its members), so tight and loose clusters are judged on their own scale. PyOD's
``CBLOF`` (also registered, through the PyOD adapter) is the library alternative; it works on raw
units, which is why this detector exists next to it. Stateless: a row's score depends on that row.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from numbers import Integral
from typing import Any, ClassVar

import numpy as np

from engine.detectors.base import check_matrix, checked_input
from engine.detectors.core_constraints import Constraint, Interval, IsNone, Options, ParamsMixin
from engine.detectors.registry import register_detector
from engine.errors import DetectorError

__all__ = ["KMeansDistance"]

log = logging.getLogger(__name__)


class KMeansDistance(ParamsMixin):
    """Distance to the nearest k-means centroid, in units of that cluster's median member distance.

    Learned: ``center_``/``spread_`` (the standardisation), ``centroids_``, ``radius_`` (per
    cluster), ``n_features_in_``, ``feature_names_in_``, ``train_scores_``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> load = rng.choice([0.2, 0.8], size=400)                     # two regimes
    >>> X = np.column_stack([load, load]) + 0.02 * rng.normal(size=(400, 2))
    >>> det = KMeansDistance(n_clusters=2, random_state=0).fit(X)
    >>> bool(det.score(np.array([[0.8, 0.2]]))[0] > 10 * np.median(det.train_scores_))
    True
    """

    name = "KMeansDistance"
    stateful = False
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "n_clusters": 8,
        "standardize": "robust",
        "n_init": 4,
        "max_iter": 300,
        "random_state": None,
    }
    CONSTRAINTS: ClassVar[dict[str, tuple[Constraint, ...]]] = {
        "n_clusters": (Interval(Integral, 1, None, "left"),),
        "standardize": (Options(str, frozenset({"robust", "standard", "none"})),),
        "n_init": (Interval(Integral, 1, None, "left"),),
        "max_iter": (Interval(Integral, 1, None, "left"),),
        "random_state": (Interval(Integral, 0, 2**32 - 1, "both"), IsNone()),
    }

    def __init__(
        self,
        n_clusters: int = 8,
        standardize: str = "robust",
        n_init: int = 4,
        max_iter: int = 300,
        random_state: int | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.standardize = standardize
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state

    def _standardized(self, arr: np.ndarray) -> np.ndarray:
        return (arr - self.center_) / self.spread_

    def fit(self, X: Any, feature_names: Sequence[str] | None = None) -> KMeansDistance:
        """Standardise, cluster, and learn each cluster's radius from its members; returns self."""
        from sklearn.cluster import KMeans  # lazy: sklearn costs ~0.5 s to import

        self.validate_params()
        arr, names = check_matrix(X, feature_names, who=self.name)
        if arr.shape[0] < max(2, self.n_clusters):
            raise DetectorError(
                f"{self.name} needs at least n_clusters={self.n_clusters} (and 2) training rows, "
                f"got {arr.shape[0]}",
                hint="fit on more rows or lower n_clusters",
            )
        if self.standardize == "robust":
            center = np.median(arr, axis=0)
            spread = np.subtract(*np.quantile(arr, [0.75, 0.25], axis=0))
        elif self.standardize == "standard":
            center, spread = arr.mean(axis=0), arr.std(axis=0)
        else:
            center, spread = np.zeros(arr.shape[1]), np.ones(arr.shape[1])
        fallback = arr.std(axis=0)
        spread = np.where(spread > 0, spread, np.where(fallback > 0, fallback, 1.0))
        self.center_, self.spread_ = center, spread
        Z = self._standardized(arr)
        n_distinct = len(np.unique(Z, axis=0))
        k = min(self.n_clusters, n_distinct)
        with warnings.catch_warnings():
            # fewer distinct points than clusters is handled above; sklearn's warning would be noise
            warnings.filterwarnings("ignore", message="Number of distinct clusters", category=UserWarning)
            km = KMeans(
                n_clusters=k, n_init=self.n_init, max_iter=self.max_iter, random_state=self.random_state
            )
            labels = km.fit_predict(Z)
        self.centroids_ = np.asarray(km.cluster_centers_, dtype=np.float64)
        dist = np.linalg.norm(Z - self.centroids_[labels], axis=1)
        overall = float(np.median(dist)) or float(dist.mean()) or 1.0
        radius = np.array(
            [float(np.median(dist[labels == c])) if np.any(labels == c) else overall for c in range(k)]
        )
        self.radius_ = np.where(radius > 1e-12, radius, overall)
        self.train_scores_ = self._score(arr)
        self.feature_names_in_ = names
        self.n_features_in_ = arr.shape[1]
        log.debug("fitted %s: %d clusters on %d rows x %d features", self.name, k, *arr.shape)
        return self

    def _score(self, arr: np.ndarray) -> np.ndarray:
        Z = self._standardized(arr)
        out = np.empty(arr.shape[0], dtype=np.float64)
        # each distance is a sum over the contiguous last axis: the same arithmetic for one row or many
        for lo in range(0, arr.shape[0], 4096):
            diff = Z[lo : lo + 4096, None, :] - self.centroids_[None, :, :]
            d = np.sqrt((diff * diff).sum(axis=2))
            out[lo : lo + 4096] = (d / self.radius_).min(axis=1)
        return out

    def score(self, X: Any, feature_names: Sequence[str] | None = None) -> np.ndarray:
        """Distance to the nearest centroid in cluster-radius units (float64, higher = more anomalous)."""
        return self._score(checked_input(self, X, feature_names))


register_detector(KMeansDistance.name, KMeansDistance.from_params, replace=True)
