"""The stream detector: the one detector artifact, from a notebook to the engine.

What a data scientist fits, what ``selfheal experiment`` judges, what MLflow stores, what a bundle
ships and what the engine, its scoring workers, shadow replay, chaos runs and ``selfheal nab run``
score with is one ``StreamDetector``: metric groups (a feature spec and a model each, a service
scored on every group whose metrics it emits), their calibration, the stateful post-processing
(``engine.detectors.likelihood``) and a threshold (declared by
``engine.detectors.stream_config.StreamConfig``). A service's *role* is the set of groups it gets;
its feature rows are the union of those groups' features (``role_features``).

Scoring a stream (the protocol)::

    det = load_detector_dir(path)                   # or StreamDetector(config).fit(history)
    states: dict[str, SeriesState] = {}             # one per series (service), created on demand
    scored = det.score(points, states)              # (ts, service, metric, value) in arrival order
    blob = det.state_to_bytes(states["vector-db"])  # a series' whole state, msgpack, no code
    states["vector-db"] = det.state_from_bytes(blob)

``score`` feeds each point to its series' features; every feature row that closes is scored by its
groups' models (one call per group and micro-batch, so the engine pays each model once per tick;
the row's score is the largest calibrated group score, calibrated again per role of several groups
on that role's training rows, so a score means the same for every role), then post-processed in
order per series.
``states`` is the only mutable thing: the detector itself is fixed after ``fit``, so the engine,
its workers and a test can share it, snapshot the states and restore them, and a restored series
scores exactly as if it had never stopped.

``score_history(points)`` is the batch execution of the same thing (vectorised features, one model
call per group, then the same post-processing per series): bitwise equal to ``score`` over the same
points followed by ``flush``. A row whose features are not finite is refused alone and counted
(``SeriesState.refused``); the rows around it are scored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, ClassVar, NamedTuple

import numpy as np
import polars as pl

from engine.detectors.likelihood import PostprocessParams, ScorePostprocessor
from engine.detectors.point_ensemble import LikelihoodEnsemble, make_point_detector
from engine.detectors.stream_config import AdaptiveFeatures, GroupConfig, StreamConfig
from engine.errors import DetectorError, NotFittedError
from engine.features import FeatureSpec, MetricSpec, OnlineFeatures, batch_features

__all__ = ["Point", "Scored", "SeriesState", "StreamDetector"]

logger = logging.getLogger(__name__)

Point = tuple[float, str, str, float]
"""(epoch seconds, service, metric, value)."""

STATE_FORMAT = 1
RAW_LIMIT = 1e300  # a model's +-inf raw score is calibrated as this (the top), NaN refuses the row


class Scored(NamedTuple):
    """One scored feature row: bucket start (epoch s), service, its role (the groups it was scored
    on, joined by "+"), the final score in [0, 1], whether it is above the threshold, the features in
    the role's order and the input time range."""

    ts: float
    service: str
    role: str
    score: float
    anomalous: bool
    values: tuple[float, ...]
    window_start: float
    window_end: float


@dataclass(eq=False)
class SeriesState:
    """Everything the detector remembers about one series: explicit, small, serialisable.

    ``features`` holds the open buckets and the transform windows, ``post`` the likelihood, the
    spatial range and the suppression counter; a role that refits per series also keeps its last
    rows (``history``). ``model`` is a cache rebuilt from ``history`` (never serialised).
    """

    series: str
    role: str | None  # None: no group matches the series; its points are ignored
    features: OnlineFeatures | None = None
    post: ScorePostprocessor | None = None
    names: tuple[str, ...] = ()
    spatial: tuple[int, ...] = ()
    warmup_points: int = 0
    buffer: list[tuple[float, float]] | None = None  # adaptive warm-up: (ts, value) not yet planned
    plan: tuple[float, int | None] | None = None  # adaptive: (interval, seasonal lag)
    last_warmup_bucket: int | None = None
    history: np.ndarray | None = None
    n_hist: int = 0
    rows_seen: int = 0
    fitted_at: int | None = None
    refused: int = 0
    model: Any = field(default=None, repr=False)


Closed = list[tuple["SeriesState", Any]]
"""Feature rows that closed (``engine.features.FeatureRow``) with the state of their series."""


class _Group:
    """A metric group's fixed parts: config, feature spec, fitted model, calibrator, spatial range."""

    def __init__(self, config: GroupConfig) -> None:
        self.config = config
        self.name = config.name
        self.adaptive = isinstance(config.features, AdaptiveFeatures)
        self.spec: FeatureSpec | None = None if self.adaptive else config.features  # type: ignore[assignment]
        # an adaptive group's columns: every one a series may get (the seasonal one where its
        # warm-up keeps it; each series' own are in ``SeriesState.names``)
        self.feature_names: tuple[str, ...] = (
            tuple(self.spec.feature_names)
            if self.spec
            else tuple(
                adaptive_spec(
                    config.features, interval=1.0, lag=1 if config.features.seasonal else None
                ).feature_names
            )  # type: ignore[arg-type, union-attr]
        )
        self.model: Any = None
        self.calibrator: Any = None
        self.low: list[float] | None = None  # training range of each feature (spatial rule)
        self.high: list[float] | None = None
        self.n_train = 0


class _Role:
    """The groups one service is scored on: their merged feature spec and each group's columns."""

    def __init__(self, groups: Sequence[_Group]) -> None:
        self.groups = tuple(groups)
        self.key = "+".join(g.name for g in groups)
        self.adaptive = any(g.adaptive for g in groups)
        self.spec: FeatureSpec | None = None
        self.columns: list[tuple[_Group, list[int]]] = []
        # a role of several groups: the calibration of the largest group score on the role's training
        # rows (each group's calibrated score is uniform on its own rows; the largest of two is not)
        self.calibrator: Any = None
        if self.adaptive:
            return
        first: FeatureSpec = groups[0].spec  # type: ignore[assignment]
        metrics: dict[str, MetricSpec] = {}
        start = 0
        for g in groups:
            spec: FeatureSpec = g.spec  # type: ignore[assignment]
            for metric, mspec in spec.metrics.items():  # each metric with its group's aggregation
                metrics[metric] = mspec.model_copy(update={"aggregation": spec.aggregation_of(metric)})
            self.columns.append((g, list(range(start, start + len(g.feature_names)))))
            start += len(g.feature_names)
        self.spec = FeatureSpec.model_validate(
            {"interval": first.interval, "lateness": first.lateness, "metrics": metrics}
        )

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(n for g in self.groups for n in g.feature_names)


class StreamDetector:
    """The one detector artifact (see the module docstring).

    ``stateful`` is True: the detector keeps per-series state between rows, explicitly, in the
    ``SeriesState`` values the caller owns.
    """

    stateful: ClassVar[bool] = True

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.name = config.name
        self.detector = config.model.class_
        self._groups = {g.name: _Group(g) for g in config.groups}
        sustained = config.threshold.sustained
        self._post_params = PostprocessParams(
            **config.postprocess.model_dump(exclude={"spatial_columns"}),
            sustain_rows=sustained.rows if sustained is not None else 0,
        )
        self._roles: dict[str, _Role] = {}
        self._role_of: dict[str, _Role | None] = {}
        self.threshold_: float = (
            float(config.threshold.value) if config.threshold.kind == "fixed" else math.nan
        )
        self.sustained_threshold_: float = math.inf if sustained is None else math.nan
        """The sustained alarm's bound on a series' mean score (``SustainedConfig``); inf: none."""

    # ------------------------------------------------------------------------------ facts

    @property
    def groups(self) -> list[GroupConfig]:
        return list(self.config.groups)

    @property
    def fitted(self) -> bool:
        return (
            not math.isnan(self.threshold_)
            and not math.isnan(self.sustained_threshold_)
            and (self.config.refit is not None or all(g.model is not None for g in self._groups.values()))
        )

    @property
    def feature_names(self) -> list[str]:
        """Every group's feature names, in group order (the union layout of ``score_history``)."""
        return [n for g in self._groups.values() for n in g.feature_names]

    def group_features(self, group: str) -> tuple[str, ...]:
        return self._groups[group].feature_names

    def role_features(self, role: str) -> tuple[str, ...]:
        """The columns of a role's rows (``Scored.role``): its groups' features, in group order."""
        return tuple(n for name in role.split("+") for n in self._groups[name].feature_names)

    @property
    def metric_names(self) -> list[str]:
        """Every metric some group reads."""
        out: list[str] = []
        for g in self._groups.values():
            out += g.spec.metric_names if g.spec is not None else [g.config.features.metric]  # type: ignore[union-attr]
        return out

    @property
    def interval_s(self) -> float:
        """The scoring tick: the fixed groups' bucket width (1 s when the group is adaptive)."""
        return next((float(g.spec.interval) for g in self._groups.values() if g.spec is not None), 1.0)

    @property
    def warmup_s(self) -> float:
        """History a fixed group needs before its first complete row (largest span, plus slack)."""
        out = 0.0
        for g in self._groups.values():
            if g.spec is not None:
                span = max(m.span for m in g.spec.metrics.values())
                out = max(out, (span + 3) * float(g.spec.interval) + float(g.spec.lateness))
        return out

    @property
    def fitted_groups(self) -> list[str]:
        """Groups whose model was fitted on history (a detector that refits per series has none)."""
        return [name for name, g in self._groups.items() if g.model is not None]

    def model_scores(self, group: str, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A fitted group's raw model scores of rows ``X`` (its feature order) and their [0, 1] scores
        before post-processing (what a bundle's probe replays)."""
        g = self._groups[group]
        if g.model is None:
            raise NotFittedError(f"group {group!r} has no model fitted on history")
        X = np.asarray(X, dtype=np.float64)
        return _model_scores(g.model, X), self._calibrated(g, X)[0]

    def role_for(self, service: str) -> str | None:
        """The groups ``service`` is scored on, joined by "+" (None: not scored)."""
        role = self._role(service)
        return role.key if role is not None else None

    def _role(self, service: str) -> _Role | None:
        try:
            return self._role_of[service]
        except KeyError:
            groups = self.config.groups_for(service)
            role = self._role_of[service] = (
                self._role_by_key("+".join(g.name for g in groups)) if groups else None
            )
            return role

    def _role_by_key(self, key: str) -> _Role:
        role = self._roles.get(key)
        if role is None:
            role = self._roles[key] = _Role([self._groups[name] for name in key.split("+")])
        return role

    def describe(self) -> dict[str, Any]:
        """JSON-safe facts for manifests and MLflow: name, model, threshold, groups and their features."""
        return {
            "name": self.name,
            "detector": self.detector,
            "params": self.config.model.params,
            "calibration": self.config.calibration,
            "threshold": self.threshold_,
            "sustained_threshold": None
            if math.isinf(self.sustained_threshold_)
            else self.sustained_threshold_,
            "threshold_policy": self.config.threshold.model_dump(mode="json"),
            "refit": self.config.refit.model_dump(mode="json") if self.config.refit else None,
            "groups": {
                g.name: {"services": list(g.config.services), "features": list(g.feature_names)}
                for g in self._groups.values()
            },
            "feature_names": self.feature_names,
            "interval_s": self.interval_s,
            "n_train": sum(g.n_train for g in self._groups.values()),
        }

    # ------------------------------------------------------------------------------ fit

    def batch_features(self, points: pl.DataFrame) -> dict[str, pl.DataFrame]:
        """Per role of the services in ``points``, their feature rows (``ts, service, *features,
        window_*``), keyed by role (``role_for``)."""
        services = sorted(points["service"].unique().to_list()) if len(points) else []
        by_role: dict[str, list[str]] = {}
        for service in services:
            role = self._role(service)
            if role is not None and role.spec is not None:
                by_role.setdefault(role.key, []).append(service)
        return {
            key: batch_features(
                points.filter(pl.col("service").is_in(mine)),
                self._roles[key].spec,
                with_windows=True,  # type: ignore[arg-type]
            )
            for key, mine in by_role.items()
        }

    def fit(self, features: Mapping[str, pl.DataFrame] | pl.DataFrame) -> StreamDetector:
        """Fit every group's model, calibrator and feature ranges on the training rows of every
        service that has the group, then the threshold on the training rows' final scores.

        ``features`` is what ``batch_features`` returns (rows the caller may have filtered, e.g.
        incidents cut out), or long-format points to compute it from. A detector that refits per
        series has nothing to learn offline. Returns self.
        """
        from engine.detectors import make_detector
        from engine.detectors.calibration import ScoreCalibrator

        if self.config.refit is not None:
            return self
        frames = self.batch_features(features) if isinstance(features, pl.DataFrame) else features
        model_cfg = self.config.model
        for group in self._groups.values():
            names = list(group.feature_names)
            parts = [
                _finite_rows(frame, names)
                for key, frame in frames.items()
                if group.name in key.split("+") and len(frame)
            ]
            X = np.vstack(parts) if parts else np.empty((0, len(names)))
            if len(X) < 2:
                raise DetectorError(
                    f"group {group.name!r} (services {group.config.services}) has {len(X)} complete training "
                    "row(s)",
                    hint="train on a longer history that includes those services and every metric of the "
                    "group's features",
                )
            model = make_detector(model_cfg.class_, model_cfg.params, random_state=self.config.seed)
            if getattr(model, "stateful", False):
                raise DetectorError(
                    f"{model_cfg.class_} keeps state between rows; a model fitted on history is shared by "
                    "every series of a group and must be stateless",
                    hint="pick a stateless detector, or set `refit` so each series gets its own model",
                )
            model.fit(X, feature_names=names)
            group.model = model
            if self.config.calibration is not None:
                group.calibrator = ScoreCalibrator(self.config.calibration).fit(model.score(X))
            group.low = X.min(axis=0).tolist()
            group.high = X.max(axis=0).tolist()
            group.n_train = len(X)
        if self.config.calibration is not None:
            self._fit_role_calibrators(frames)
        if self.config.threshold.kind == "quantile":
            scored = self._score_frames(frames)
            if scored.is_empty():
                raise DetectorError("no training row could be scored", hint="check the training data")
            self.threshold_ = float(np.quantile(scored["score"].to_numpy(), self.config.threshold.q))
            sustained = self.config.threshold.sustained
            if sustained is not None:  # the mean of each series' last rows, as ScorePostprocessor keeps it
                means = (
                    scored.sort("service", "ts")
                    .select(pl.col("score").rolling_mean(sustained.rows).over("service"))
                    .drop_nulls()
                    .to_series()
                    .to_numpy()
                )
                if len(means) == 0:
                    raise DetectorError(
                        f"threshold.sustained: no series has {sustained.rows} training rows",
                        hint="train on more history or lower threshold.sustained.rows",
                    )
                self.sustained_threshold_ = float(np.quantile(means, sustained.q))
        logger.debug("fitted %s; threshold %.4f", self.name, self.threshold_)
        return self

    def _fit_role_calibrators(self, frames: Mapping[str, pl.DataFrame]) -> None:
        """Calibrate each role of several groups on its own training rows, after the largest group
        score: a score then means the same for every role (a role's training rows are above 0.5
        half of the time), where the largest of two uniform scores is above 0.5 three times in four
        and a service scored on two groups would look half-anomalous when healthy."""
        from engine.detectors.calibration import ScoreCalibrator

        for key, frame in frames.items():
            role = self._role_by_key(key)
            role.calibrator = None
            if len(role.groups) < 2 or not len(frame):
                continue
            combined, ok = self._role_scores(role, _finite_rows(frame, role.feature_names))
            if ok.sum() < 2:
                raise DetectorError(
                    f"role {key!r} has {int(ok.sum())} training row(s) its groups' models could score",
                    hint="train on a longer history of the services scored on those groups",
                )
            role.calibrator = ScoreCalibrator(self.config.calibration).fit(combined[ok])

    def role_calibrations(self) -> dict[str, Any]:
        """The fitted calibration of each role of several groups (``ScoreCalibrator``), by role key."""
        return {key: role.calibrator for key, role in self._roles.items() if role.calibrator is not None}

    def spatial_columns(self, names: Sequence[str]) -> tuple[int, ...]:
        """Indices of the columns the spatial rule watches among ``names``."""
        if self.config.postprocess.spatial_tolerance is None:
            return ()
        patterns = self.config.postprocess.spatial_columns
        if patterns is None:
            return tuple(range(len(names)))
        return tuple(j for j, n in enumerate(names) if any(fnmatchcase(n, p) for p in patterns))

    def point_columns(self, names: Sequence[str]) -> tuple[int, ...]:
        """Indices of the columns the point detectors read among ``names`` (``points.columns``)."""
        if self.config.points is None:
            return ()
        patterns = self.config.points.columns
        return tuple(j for j, n in enumerate(names) if any(fnmatchcase(n, p) for p in patterns))

    def _point_ensemble(self, names: Sequence[str], *, adaptive: bool) -> LikelihoodEnsemble | None:
        """A series' point detectors: every member on every column ``points.columns`` matches, each
        with its own likelihood (None without ``points``, or when no column of a role matches)."""
        points = self.config.points
        if points is None:
            return None
        columns = self.point_columns(names)
        if not columns:
            if adaptive:  # the detector's only role: a typo, not a role without such columns
                raise DetectorError(
                    f"points.columns {points.columns} match no feature of {list(names)}",
                    hint="name a feature the spec computes (e.g. value__raw)",
                )
            return None
        p = self._post_params
        return LikelihoodEnsemble(
            [make_point_detector(m.name, m.params) for _ in columns for m in points.members],
            columns=[j for j in columns for _ in points.members],
            average=p.average,
            history=p.history,
            reestimate=p.reestimate,
        )

    # ------------------------------------------------------------------------------ states

    def new_state(self, series: str, *, warmup_points: int | None = None) -> SeriesState:
        """A fresh state for ``series`` (its groups are chosen by name). ``warmup_points`` overrides
        an adaptive group's warm-up (NAB: each file's probationary period)."""
        role = self._role(series)
        if role is None:
            return SeriesState(series, None)
        state = SeriesState(series, role.key)
        if role.adaptive:
            feats: AdaptiveFeatures = role.groups[0].config.features  # type: ignore[assignment]
            state.warmup_points = max(int(warmup_points or feats.warmup_points), 2)
            state.buffer = []
        else:
            self._start_features(state, role, role.spec, role.feature_names)  # type: ignore[arg-type]
        return state

    def _start_features(
        self, state: SeriesState, role: _Role, spec: FeatureSpec, names: Sequence[str]
    ) -> None:
        state.features = OnlineFeatures(spec)
        state.names = tuple(names)
        state.spatial = self.spatial_columns(names)
        if role.adaptive and self.config.postprocess.spatial_tolerance is not None and not state.spatial:
            raise DetectorError(
                f"postprocess.spatial_columns {self.config.postprocess.spatial_columns} match no feature "
                f"of {list(names)}",
                hint="name a feature the spec computes (e.g. value__raw) or set spatial_tolerance: null",
            )
        low = high = None
        if all(g.low is not None for g in role.groups):  # the range of the groups' training rows
            full_low = [x for g in role.groups for x in g.low]  # type: ignore[union-attr]
            full_high = [x for g in role.groups for x in g.high]  # type: ignore[union-attr]
            low, high = [full_low[j] for j in state.spatial], [full_high[j] for j in state.spatial]
        state.post = ScorePostprocessor(
            self._post_params,
            low=low,
            high=high,
            columns=len(state.spatial),
            points=self._point_ensemble(names, adaptive=role.adaptive),
            with_model=self.config.points is None or self.config.points.with_model,
        )
        if self.config.refit is not None:
            width = 2 * (self.config.refit.window + self.config.refit.every)
            state.history = np.empty((width, len(names)), dtype=np.float64)

    def state_to_bytes(self, state: SeriesState) -> bytes:
        """The whole state of one series, as msgpack (plain numbers, lists and bytes: no code)."""
        import msgpack

        keep = 0
        hist = b""
        if state.history is not None and self.config.refit is not None:
            keep = min(state.n_hist, self.config.refit.window + self.config.refit.every)
            hist = np.ascontiguousarray(state.history[state.n_hist - keep : state.n_hist]).tobytes()
        value = {
            "format": STATE_FORMAT,
            "series": state.series,
            "role": state.role,
            "features": state.features.export_series(state.series) if state.features else None,
            "feature_counts": state.features.stats() if state.features else None,
            "post": state.post.state() if state.post else None,
            "warmup_points": state.warmup_points,
            "buffer": [list(p) for p in state.buffer] if state.buffer is not None else None,
            "plan": list(state.plan) if state.plan is not None else None,
            "last_warmup_bucket": state.last_warmup_bucket,
            "history": hist,
            "history_rows": keep,
            "rows_seen": state.rows_seen,
            "fitted_at": state.fitted_at,
            "refused": state.refused,
        }
        return msgpack.packb(value, use_bin_type=True)

    def state_from_bytes(self, blob: bytes) -> SeriesState:
        """A state written by ``state_to_bytes`` (of a detector with the same config)."""
        import msgpack

        try:
            value = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several types for a corrupt blob
            raise DetectorError(f"detector state cannot be read: {exc}", hint="discard the snapshot") from exc
        if not isinstance(value, dict) or value.get("format") != STATE_FORMAT:
            raise DetectorError("not a detector state of this format", hint="discard the snapshot")
        series = value["series"]
        if value["role"] != self.role_for(series):
            raise DetectorError(
                f"state of {series!r} belongs to role {value['role']!r}, this detector gives "
                f"{self.role_for(series)!r}",
                hint="snapshots are only valid for the detector that wrote them",
            )
        state = self.new_state(series, warmup_points=value["warmup_points"])
        if state.role is None:
            return state
        if value["plan"] is not None:
            role, feats = self._adaptive(state)
            interval, lag = value["plan"]
            self._plan(state, role, feats, float(interval), lag)
        state.buffer = [tuple(p) for p in value["buffer"]] if value["buffer"] is not None else None
        state.last_warmup_bucket = value["last_warmup_bucket"]
        if value["features"] is not None and state.features is not None:
            state.features.import_series(series, value["features"])
            for key, count in (value["feature_counts"] or {}).items():
                if key in (
                    "accepted_points",
                    "late_points",
                    "ignored_points",
                    "invalid_points",
                    "rows_emitted",
                ):
                    setattr(state.features, key, count)
        if value["post"] is not None and state.post is not None:
            state.post.restore(value["post"])
        keep = value["history_rows"]
        if keep and state.history is not None:
            rows = np.frombuffer(value["history"], dtype=np.float64).reshape(keep, len(state.names))
            state.history[:keep] = rows
            state.n_hist = keep
        state.rows_seen = value["rows_seen"]
        state.fitted_at = value["fitted_at"]
        state.refused = value["refused"]
        return state

    # ------------------------------------------------------------------------------ scoring

    def score(self, points: Iterable[Point], states: MutableMapping[str, SeriesState]) -> list[Scored]:
        """Feed points in arrival order; the scored rows of every bucket they closed.

        States of series not in ``states`` are created (``new_state``) and added. Equal to
        ``score_rows(feed(points, states))`` without the refused rows: callers that must know which
        point closed which row (the engine's arrival times) use the two halves.
        """
        return [s for s in self.score_rows(self.feed(points, states)) if s is not None]

    def flush(self, states: MutableMapping[str, SeriesState]) -> list[Scored]:
        """End of stream: close every open bucket (and finish warm-ups that never completed)."""
        return [s for s in self.score_rows(self.close(states)) if s is not None]

    def feed(self, points: Iterable[Point], states: MutableMapping[str, SeriesState]) -> Closed:
        """Points into their series' features; the feature rows that closed, oldest first per series."""
        self._check_fitted()
        closed: Closed = []
        get = states.get
        for ts, service, metric, value in points:
            state = get(service)
            if state is None:
                state = states[service] = self.new_state(service)
            if state.features is not None:
                rows = state.features.push(ts, service, metric, value)
            elif state.buffer is not None:
                rows = self._buffer(state, ts, metric, value)
            else:
                continue  # no role
            if rows:
                closed.extend((state, row) for row in rows)
        return closed

    def close(self, states: MutableMapping[str, SeriesState]) -> Closed:
        """The rows of every open bucket, closed now (end of stream), not yet scored."""
        closed: Closed = []
        for state in states.values():
            if state.buffer:
                closed.extend((state, row) for row in self._start_adaptive(state))
            if state.features is not None:
                closed.extend((state, row) for row in state.features.flush())
        return closed

    def _adaptive(self, state: SeriesState) -> tuple[_Role, AdaptiveFeatures]:
        role = self._role_by_key(state.role)  # type: ignore[arg-type]
        return role, role.groups[0].config.features  # type: ignore[return-value]

    def _buffer(self, state: SeriesState, ts: float, metric: str, value: float) -> list[Any]:
        _, feats = self._adaptive(state)
        if metric != feats.metric or not (value - value == 0.0 and ts - ts == 0.0):
            return []
        state.buffer.append((float(ts), float(value)))  # type: ignore[union-attr]
        if len(state.buffer) < state.warmup_points:  # type: ignore[arg-type]
            return []
        return self._start_adaptive(state)

    def _start_adaptive(self, state: SeriesState) -> list[Any]:
        """The warm-up is complete: choose interval and seasonality, replay the buffered points."""
        role, feats = self._adaptive(state)
        ts = np.array([p[0] for p in state.buffer], dtype=np.float64)  # type: ignore[union-attr]
        values = np.array([p[1] for p in state.buffer], dtype=np.float64)  # type: ignore[union-attr]
        interval, lag = plan_series(feats, ts, values)
        self._plan(state, role, feats, interval, lag)
        state.last_warmup_bucket = int(ts[-1] // interval)
        state.buffer = None
        assert state.features is not None
        return state.features.push_many(
            ts.tolist(), [state.series] * len(ts), [feats.metric] * len(ts), values.tolist()
        )

    def _plan(
        self, state: SeriesState, role: _Role, feats: AdaptiveFeatures, interval: float, lag: int | None
    ) -> None:
        spec = adaptive_spec(feats, interval=interval, lag=lag)
        state.plan = (interval, lag)
        self._start_features(state, role, spec, spec.feature_names)

    def score_rows(self, closed: Closed) -> list[Scored | None]:
        """Score closed rows (``feed``/``close``), aligned with them; None where a row is refused.

        One model call per group and role (the micro-batch of a tick), then the post-processing of
        each row in order. A refused row (non-finite features, or a model that cannot score it) is
        counted in its series' ``refused`` and changes no state.
        """
        out: list[Scored | None] = [None] * len(closed)
        if not closed:
            return out
        groups: dict[Any, list[int]] = {}
        refit = self.config.refit is not None
        for i, (state, _) in enumerate(closed):
            groups.setdefault(id(state) if refit else state.role, []).append(i)
        for idx in groups.values():
            if refit:  # a model per series: one pass over the series' rows, in order
                state = closed[idx[0]][0]
                scored = self._score_refit(state, [closed[i][1] for i in idx])
            else:
                role = self._role_by_key(closed[idx[0]][0].role)  # type: ignore[arg-type]
                scored = self._score_role(role, [closed[i] for i in idx])
            for i, s in zip(idx, scored, strict=True):
                out[i] = s
        return out

    def _score_role(self, role: _Role, items: Closed) -> list[Scored | None]:
        X = np.array([r.values for _, r in items], dtype=np.float64)
        combined, ok = self._role_scores(role, X)
        threshold, sustained = self.threshold_, self.sustained_threshold_
        name = role.key
        out: list[Scored | None] = []
        for i, (state, row) in enumerate(items):
            if not ok[i]:
                state.refused += 1
                out.append(None)
                continue
            x = row.values
            post = state.post
            score = post.update(float(combined[i]), [x[j] for j in state.spatial], ts=row.ts, row=x)  # type: ignore[union-attr]
            alarm = score > threshold or min(score, post.sustained) > sustained  # type: ignore[union-attr]
            out.append(Scored(row.ts, row.service, name, score, alarm, x, row.window_start, row.window_end))
        return out

    def _role_scores(self, role: _Role, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of a role: the largest [0, 1] score of its groups' models (through the role's own
        calibration when it has one, ``_fit_role_calibrators``), and which rows all of them could
        score."""
        combined = np.zeros(len(X))
        ok = np.ones(len(X), dtype=bool)
        for group, cols in role.columns:
            scores, good = self._calibrated(group, X[:, cols])
            np.maximum(combined, scores, out=combined)
            ok &= good
        if role.calibrator is not None and ok.any():
            combined[ok] = role.calibrator.transform(combined[ok])
        return combined, ok

    def _calibrated(self, group: _Group, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[0, 1] scores of rows of a group's features from its model (calibrated, or squashed) and
        which rows could be scored: rows with non-finite features, or that the model cannot score,
        are not."""
        ok = np.isfinite(X).all(axis=1) if X.size else np.ones(len(X), dtype=bool)
        raw = np.full(len(X), np.nan)
        if ok.any():
            raw[ok] = _model_scores(group.model, X[ok])
        ok &= ~np.isnan(raw)
        raw = np.clip(raw, -RAW_LIMIT, RAW_LIMIT)
        if group.calibrator is not None:
            out = np.zeros(len(X))
            if ok.any():
                out[ok] = group.calibrator.transform(raw[ok])
            return out, ok
        squash = ScorePostprocessor(self._post_params).squash
        return np.array([squash(float(r)) if k else 0.0 for r, k in zip(raw, ok, strict=True)]), ok

    def _score_refit(self, state: SeriesState, rows: list[Any]) -> list[Scored | None]:
        """Rows of one series whose model is refitted on its own past rows (no look-ahead)."""
        from engine.detectors import make_detector

        refit = self.config.refit
        assert refit is not None and state.post is not None and state.history is not None
        X = np.array([r.values for r in rows], dtype=np.float64)
        ok = np.isfinite(X).all(axis=1)
        if not ok.all():
            state.refused += int((~ok).sum())
            rows = [r for r, k in zip(rows, ok, strict=True) if k]
            X = X[ok]
        raw = np.zeros(len(rows))
        i = 0
        while i < len(rows):
            if state.fitted_at is None and state.rows_seen < refit.min_rows:
                take = min(len(rows) - i, refit.min_rows - state.rows_seen)
                self._append_history(state, X[i : i + take])
                state.rows_seen += take
                i += take
                continue
            due = state.fitted_at is None or state.rows_seen - state.fitted_at >= refit.every
            if due or state.model is None:  # after a restore the model is rebuilt from the history
                if due:
                    state.fitted_at = state.rows_seen
                rebuild = state.model is None and not due
                if state.model is None:
                    state.model = make_detector(
                        self.config.model.class_, self.config.model.params, random_state=self.config.seed
                    )
                state.model.fit(self._fit_rows(state), feature_names=list(state.names))
                if rebuild and getattr(state.model, "stateful", False):  # replay what it scored since
                    since = state.rows_seen - state.fitted_at  # type: ignore[operator]
                    state.model.score(
                        state.history[state.n_hist - since : state.n_hist], feature_names=list(state.names)
                    )
            take = min(len(rows) - i, refit.every - (state.rows_seen - state.fitted_at))
            raw[i : i + take] = state.model.score(X[i : i + take], feature_names=list(state.names))
            self._append_history(state, X[i : i + take])
            state.rows_seen += take
            i += take
        interval = state.plan[0] if state.plan else self.interval_s
        last_warm = state.last_warmup_bucket
        post = state.post.update
        squash = state.post.squash
        spatial = state.spatial
        threshold, sustained = self.threshold_, self.sustained_threshold_
        role = state.role or ""
        scored = []
        for k, r in enumerate(rows):
            warm = last_warm is not None and round(r.ts / interval) <= last_warm
            x = r.values
            score = post(squash(float(raw[k])), [x[j] for j in spatial], warmup=warm, ts=r.ts, row=x)
            alarm = score > threshold or min(score, state.post.sustained) > sustained
            scored.append(Scored(r.ts, r.service, role, score, alarm, x, r.window_start, r.window_end))
        if ok.all():
            return list(scored)
        it = iter(scored)
        return [next(it) if k else None for k in ok]

    def _fit_rows(self, state: SeriesState) -> np.ndarray:
        """The rows the model was (or is) fitted on: the last ``window`` rows before ``fitted_at``."""
        assert self.config.refit is not None and state.history is not None and state.fitted_at is not None
        end = state.n_hist - (state.rows_seen - state.fitted_at)
        return state.history[max(0, end - self.config.refit.window) : end]

    def _append_history(self, state: SeriesState, block: np.ndarray) -> None:
        """Keep at least the last ``window + every`` rows (enough to refit after a restore)."""
        assert self.config.refit is not None and state.history is not None
        keep = self.config.refit.window + self.config.refit.every
        hist = state.history
        for start in range(0, len(block), keep):
            part = block[start : start + keep]
            if state.n_hist + len(part) > len(hist):
                hist[:keep] = hist[state.n_hist - keep : state.n_hist]
                state.n_hist = keep
            hist[state.n_hist : state.n_hist + len(part)] = part
            state.n_hist += len(part)

    # ------------------------------------------------------------------------------ batch

    def score_features(self, frames: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
        """Batch scoring of the roles' feature frames (``batch_features``), each series from a fresh
        state in time order: ``ts, service, role, score, anomalous, window_*`` and the features
        (union layout, null where a role lacks a feature)."""
        self._check_fitted()
        return self._score_frames(frames)

    def _score_frames(self, frames: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
        parts = []
        for role_name, frame in frames.items():
            if frame.is_empty():
                continue
            role = self._role_by_key(role_name)
            frame = frame.sort("service", "ts")
            X = frame.select(role.feature_names).to_numpy().astype(np.float64, copy=False)
            calibrated, ok = self._role_scores(role, X)
            services = frame["service"].to_list()
            scores = np.zeros(len(frame))
            means = np.zeros(len(frame))  # each row's series' mean score (the sustained alarm)
            states: dict[str, SeriesState] = {}
            # the point detectors read the row as the stream gives it: bucket start, Python floats
            interval = float(role.spec.interval)  # type: ignore[union-attr]
            buckets = (frame["ts"].dt.epoch("us").to_numpy() / (interval * 1e6)).round().astype(np.int64)
            rows = X.tolist() if self.config.points is not None else None
            for i, service in enumerate(services):
                if not ok[i]:
                    continue
                state = states.get(service)
                if state is None:
                    state = states[service] = self.new_state(service)
                x = X[i]
                scores[i] = state.post.update(  # type: ignore[union-attr]
                    float(calibrated[i]),
                    [float(x[j]) for j in state.spatial],
                    ts=int(buckets[i]) * interval,
                    row=rows[i] if rows is not None else (),
                )
                means[i] = state.post.sustained  # type: ignore[union-attr]
            alarms = (scores > self.threshold_) | (np.minimum(scores, means) > self.sustained_threshold_)
            part = frame.with_columns(
                pl.lit(role_name).alias("role"),
                pl.Series("score", scores),
                pl.Series("anomalous", alarms),
            ).filter(pl.Series(ok))
            parts.append(part)
        if not parts:
            return pl.DataFrame(
                schema={
                    "ts": pl.Datetime("us"),
                    "service": pl.Utf8,
                    "role": pl.Utf8,
                    "score": pl.Float64,
                    "anomalous": pl.Boolean,
                }
            )
        return pl.concat(parts, how="diagonal_relaxed").sort("ts", "service")

    def score_history(self, points: pl.DataFrame) -> pl.DataFrame:
        """``score_features(batch_features(points))``: history scored as the stream would score it."""
        return self.score_features(self.batch_features(points))

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise NotFittedError(
                f"stream detector {self.name!r} is not fitted", hint="call fit(history) first"
            )


def _finite_rows(frame: pl.DataFrame, names: Sequence[str]) -> np.ndarray:
    X = frame.select(list(names)).to_numpy().astype(np.float64, copy=False)
    return X[np.isfinite(X).all(axis=1)] if len(X) else X


def _model_scores(model: Any, X: np.ndarray) -> np.ndarray:
    """Raw scores; a batch the model refuses is scored row by row so only the bad rows are lost."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(model.score(X), dtype=np.float64)
    except DetectorError:
        if len(X) == 1:
            return np.array([np.nan])
        return np.concatenate([_model_scores(model, X[i : i + 1]) for i in range(len(X))])


def adaptive_spec(
    feats: AdaptiveFeatures, *, interval: float, lag: int | None, source: str = "<detector>"
) -> FeatureSpec:
    """The feature spec an adaptive role uses for one series once its warm-up chose interval and lag."""
    transforms = list(feats.transforms)
    if lag is not None:
        transforms.append({"kind": "diff", "lag": lag, "name": "seasonal_diff"})
    return FeatureSpec.parse(
        {"interval": interval, "metrics": {feats.metric: {"transforms": transforms}}},
        source=source,
        prefix="features",
    )


def plan_series(feats: AdaptiveFeatures, ts: np.ndarray, values: np.ndarray) -> tuple[float, int | None]:
    """Interval (the median step) and seasonal lag from warm-up points only (epoch seconds, values)."""
    steps = np.diff(ts)
    steps = steps[steps > 0]
    interval = float(max(1, round(float(np.median(steps))))) if len(steps) else 1.0
    seasonal = feats.seasonal
    if seasonal is None:
        return interval, None
    lag = round(seasonal.period / interval)
    buckets = np.floor(ts / interval)
    # enough warm-up to compare a period with the previous one (plus a little)
    if lag < 1 or len(np.unique(buckets)) < lag + 10:
        return interval, None
    # the gate on bucket values: var(x_t - x_{t-lag}) < gate * var(x)
    _, first = np.unique(buckets, return_index=True)
    x = values[first]
    diff = x[lag:] - x[:-lag]
    var_x = float(np.var(x))
    keep = var_x > 0 and float(np.var(diff)) < seasonal.gate * var_x
    return interval, lag if keep else None
