"""Ensembles: several registered detectors on the same rows, their calibrated scores combined.

Declared like any detector, so an experiment spec or a NAB detector spec can name one::

    class: Ensemble
    params:
      combine: max                       # max | mean | rank
      members:
        - {name: SeasonalResidual, params: {season: 1440, window: 15}}
        - {name: CUSUM, params: {reference: 240, gap: 60}, features: ['retrieval_*']}
        - {name: IForest, params: {n_estimators: 100}}

A member's ``features`` (``fnmatch`` patterns over the feature names) restricts it to the columns it
is meant for (a drift detector on quality metrics, a forecaster on latencies); without it a member
sees every column. A member none of whose patterns match sits out (one spec serves services that
emit different metrics); at least one member must have columns.

Raw scores of different families live on different scales, so each member's scores go through its
own ``ScoreCalibrator`` (fitted on that member's training scores) before combining:

* ``max``: the most alarmed member decides (good when members watch different failure modes);
* ``mean``: average of calibrated scores (``calibration`` chooses the calibrator: ecdf by default);
* ``rank``: average of empirical-CDF ranks among each member's training scores, whatever
  ``calibration`` says (robust to any member's score distribution).

A member's training scores are its one-step-ahead ``train_scores_`` when it is a sequence detector
(scoring the training rows again would feed it the history twice), otherwise ``score(X)``. The
ensemble is a sequence detector when any member is one; batch == row by row holds because it holds
for every member.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from numbers import Integral
from typing import Any, ClassVar

import numpy as np

from engine.detectors.base import check_matrix, checked_input
from engine.detectors.calibration import CALIBRATION_METHODS, ScoreCalibrator
from engine.detectors.core_constraints import Constraint, InstanceOf, Interval, IsNone, Options, ParamsMixin
from engine.detectors.registry import make_detector, register_detector
from engine.errors import DetectorParamError

__all__ = ["Ensemble", "select_columns"]

log = logging.getLogger(__name__)

NAME = "Ensemble"
COMBINE = ("max", "mean", "rank")


def _member_spec(item: Any, index: int) -> tuple[str, dict[str, Any], list[str] | None]:
    """``{name|class: str, params: dict, features: [pattern]}`` -> (name, params, features)."""
    where = f"The 'members' parameter of {NAME}: members[{index}]"
    if not isinstance(item, dict):
        raise DetectorParamError(
            f"{where} must be a mapping, got {item!r}", hint="write {name: IForest, params: {...}}"
        )
    unknown = sorted(set(item) - {"name", "class", "params", "features"})
    name = item.get("name", item.get("class"))
    if unknown or not isinstance(name, str) or not name:
        what = f"has unknown key(s) {unknown}" if unknown else "needs a detector `name`"
        raise DetectorParamError(
            f"{where} {what}", hint="members take `name` (or `class`), `params` and `features` only"
        )
    params = item.get("params") or {}
    if not isinstance(params, dict):
        raise DetectorParamError(f"{where}.params must be a mapping, got {params!r}")
    features = item.get("features")
    if features is not None and (
        not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features)
    ):
        raise DetectorParamError(
            f"{where}.features must be a non-empty list of feature names or patterns, got {features!r}",
            hint="e.g. features: ['retrieval_*', 'response_variability__raw']",
        )
    return name, dict(params), features


def select_columns(names: Sequence[str] | None, patterns: Sequence[str], who: str) -> np.ndarray:
    """Indices of the columns whose names match any of the ``fnmatch`` patterns (may be empty)."""
    if names is None:
        raise DetectorParamError(
            f"{who}: selecting features {list(patterns)} needs feature names at fit",
            hint="pass feature_names to fit (or a DataFrame)",
        )
    idx = [i for i, n in enumerate(names) if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return np.array(idx, dtype=np.int64)


class Ensemble(ParamsMixin):
    """Combine the calibrated scores of member detectors (see the module docstring).

    Learned: ``members_`` (fitted detectors), ``calibrators_``, ``columns_`` (each member's
    columns), ``n_features_in_``,
    ``feature_names_in_``, ``train_scores_`` and ``n_warmup_`` (leading training rows without a
    score from every member).
    """

    name = NAME
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "members": [],
        "combine": "mean",
        "calibration": "ecdf",
        "random_state": 0,
    }
    CONSTRAINTS: ClassVar[dict[str, tuple[Constraint, ...]]] = {
        "members": (InstanceOf(list),),
        "combine": (Options(str, frozenset(COMBINE)),),
        "calibration": (Options(str, frozenset(CALIBRATION_METHODS)),),
        "random_state": (Interval(Integral, 0, 2**32 - 1, "both"), IsNone()),
    }

    def __init__(
        self,
        members: list[dict[str, Any]] | None = None,
        combine: str = "mean",
        calibration: str = "ecdf",
        random_state: int | None = 0,
    ) -> None:
        self.members = list(members or [])
        self.combine = combine
        self.calibration = calibration
        self.random_state = random_state

    def __repr__(self) -> str:
        names = [m.get("name", m.get("class")) if isinstance(m, dict) else m for m in self.members]
        return f"Ensemble({names}, combine={self.combine!r})"

    @property
    def stateful(self) -> bool:
        """True when any member is a sequence detector (rows must then be consecutive)."""
        members = getattr(self, "members_", None)
        if members is None:
            members = [make_detector(*_member_spec(m, i)[:2]) for i, m in enumerate(self.members)]
        return any(getattr(m, "stateful", False) for m in members)

    def _check_params_together(self) -> None:
        """Each member spec is well formed (the members' own parameters are checked at their fit)."""
        if not self.members:
            raise DetectorParamError(
                f"The 'members' parameter of {NAME} must list at least one detector. Got [] instead.",
                hint="members: [{name: SeasonalResidual, params: {season: 1440}}, {name: IForest}]",
            )
        for i, item in enumerate(self.members):
            _member_spec(item, i)

    def fit(self, X: Any, feature_names: Sequence[str] | None = None) -> Ensemble:
        """Fit every member on X, then one calibrator per member on its training scores."""
        self.validate_params()
        arr, names = check_matrix(X, feature_names, who=NAME)
        members, calibrators, columns, train = [], [], [], []
        method = "ecdf" if self.combine == "rank" else self.calibration
        for i, item in enumerate(self.members):
            name, params, features = _member_spec(item, i)
            cols = (
                np.arange(arr.shape[1])
                if features is None
                else select_columns(names, features, f"{NAME} members[{i}]")
            )
            if cols.size == 0:
                # one spec serves services with different metrics: a member with nothing to watch sits out
                log.debug("%s members[%d] (%s): no feature matches %s; skipped", NAME, i, name, features)
                continue
            sub_names = [names[c] for c in cols] if names is not None else None
            sub = arr[:, cols]
            det = make_detector(name, params, random_state=self.random_state).fit(
                sub, feature_names=sub_names
            )
            raw = det.train_scores_ if getattr(det, "stateful", False) else det.score(sub)
            cal = ScoreCalibrator(method).fit(raw)
            members.append(det)
            calibrators.append(cal)
            columns.append(cols)
            train.append(cal.transform(raw))
        if not members:
            raise DetectorParamError(
                f"{NAME}: no member matches any of the features {names}",
                hint="check the members' `features` patterns against the feature names",
            )
        self.members_, self.calibrators_, self.columns_ = members, calibrators, columns
        common = min(len(t) for t in train)
        self.n_warmup_ = arr.shape[0] - common
        self.train_scores_ = self._combine([t[len(t) - common :] for t in train])
        self.feature_names_in_ = names
        self.n_features_in_ = arr.shape[1]
        return self

    def _combine(self, calibrated: list[np.ndarray]) -> np.ndarray:
        stacked = np.vstack(calibrated)
        if self.combine == "max":
            return stacked.max(axis=0)
        total = stacked[0].copy()
        for row in stacked[1:]:  # explicit order: identical for one row and for a batch
            total += row
        return total / stacked.shape[0]

    def score(self, X: Any, feature_names: Sequence[str] | None = None) -> np.ndarray:
        """Combined calibrated member scores in [0, 1] (float64, higher = more anomalous)."""
        arr = checked_input(self, X, feature_names)
        if arr.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        parts = [
            cal.transform(det.score(arr[:, cols]))
            for det, cal, cols in zip(self.members_, self.calibrators_, self.columns_, strict=True)
        ]
        return self._combine(parts)


register_detector(NAME, Ensemble.from_params, replace=True)
