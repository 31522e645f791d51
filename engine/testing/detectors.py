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

The stream detector (``engine.detectors.stream``: features + model + calibration + stateful
post-processing, the artifact the engine runs) has a suite of its own, ``STREAM_CHECKS``, run the
same way on a *stream factory* (a zero-argument callable returning a fitted ``StreamDetector`` and
long-format test points): online == batch bit for bit, any chunking of the points gives the same
scores, a state snapshot restored mid-stream continues exactly, save/load gives identical scores,
a row with non-finite features is refused alone, and a value far outside anything seen (1e308)
scores at the top. ``stream_factory(model, params)`` builds one around any registered detector.
"""

from __future__ import annotations

import copy
import functools
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.detectors.base import Detector
from engine.detectors.persistence import load_detector, save_detector
from engine.errors import FeatureMismatchError, NotFittedError

__all__ = [
    "CHECKS",
    "STREAM_CHECKS",
    "DetectorFactory",
    "StreamFactory",
    "check_declares_statefulness",
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
    "check_stream",
    "fit_on_rows",
    "stream_factory",
    "stream_points",
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


def check_declares_statefulness(factory: DetectorFactory) -> None:
    """The protocol says whether a detector keeps state between rows (``stateful``, a bool)."""
    stateful = getattr(factory(), "stateful", None)
    assert isinstance(stateful, bool), f"a detector must declare `stateful` (a bool), got {stateful!r}"


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
    check_declares_statefulness,
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


def _run_checks(factory: Any, checks: Sequence[Callable[[Any], None]]) -> None:
    """Run every check; the first failure raises AssertionError prefixed with the check's name."""
    for check in checks:
        try:
            check(factory)
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__}: {exc}") from exc


def check_detector(
    factory: DetectorFactory, checks: Sequence[Callable[[DetectorFactory], None]] = CHECKS
) -> None:
    """Run every check; the first failure raises AssertionError prefixed with the check's name."""
    _run_checks(factory, checks)


# ---------------------------------------------------------------------------------- stream detectors

StreamFactory = Callable[[], "tuple[Any, Any]"]
"""Zero-argument callable: (a fitted StreamDetector, long-format test points as a polars frame)."""

STREAM_SERVICES = ("svc-a", "svc-b", "retrieval-1")
STREAM_START = 1_700_000_040.0  # a whole minute


def stream_points(minutes: int, *, seed: int = 3, start: float = STREAM_START) -> Any:
    """Points of three services every 20 s: latency and memory for all, precision for retrieval-*."""
    import polars as pl

    rng = np.random.default_rng(seed)
    rows: list[tuple[float, str, str, float]] = []
    for k in range(minutes * 3):
        t = start + 20.0 * k
        for service in STREAM_SERVICES:
            rows.append((t, service, "latency_ms", float(100 + 10 * np.sin(k / 40) + rng.normal(0, 3))))
            rows.append((t, service, "memory", float(0.5 + rng.normal(0, 0.01))))
            if service.startswith("retrieval"):
                rows.append((t, service, "precision", float(0.9 + rng.normal(0, 0.005))))
    frame = pl.DataFrame(rows, schema=["ts", "service", "metric", "value"], orient="row")
    return frame.with_columns(pl.from_epoch(pl.col("ts") * 1_000_000, time_unit="us").alias("ts"))


def stream_config(model: str, params: dict[str, Any] | None = None, **overrides: Any) -> Any:
    """A two-group stream detector config around ``model`` (retrieval services also get precision)."""
    from engine.detectors.stream_config import StreamConfig

    core = {  # not in alphabetical order: the declared order is the column order, and must survive
        "memory": {"transforms": ["raw", {"kind": "diff", "lag": 3}]},
        "latency_ms": {"transforms": ["raw", {"kind": "zscore", "window": 10, "min_std": 1.0}]},
    }
    doc = {
        "name": "conformance",
        "groups": [
            {"name": "default", "features": {"interval": "1m", "metrics": core}},
            {
                "name": "retrieval",
                "services": ["retrieval-*"],
                "features": {
                    "interval": "1m",
                    "metrics": {"precision": {"transforms": ["raw", {"kind": "diff"}]}},
                },
            },
        ],
        "model": {"class": model, "params": dict(params or {})},
        "calibration": "ecdf",
        "threshold": {"kind": "quantile", "q": 0.98},
        **overrides,
    }
    return StreamConfig.model_validate(doc)


def stream_factory(model: str, params: dict[str, Any] | None = None, **overrides: Any) -> StreamFactory:
    """A stream factory around a registered (stateless) detector: fitted on 6 h, tested on 3 h."""

    @functools.cache  # the checks never change a fitted detector (states are theirs): fit it once
    def build() -> tuple[Any, Any]:
        from engine.detectors.stream import StreamDetector

        det = StreamDetector(stream_config(model, params, **overrides)).fit(stream_points(360, seed=1))
        return det, stream_points(180, seed=2, start=STREAM_START + 6 * 3600)

    build.__name__ = f"stream_{model}"
    return build


def fit_on_rows(config: Any, X: Any, *, service: str = "train") -> Any:
    """A stream detector with one fixed group fitted on the feature rows ``X`` (spec column order),
    as if they were consecutive buckets of ``service``: for tests that start from a matrix."""
    import polars as pl

    from engine.detectors.stream import StreamDetector

    det = StreamDetector(config)
    (group,) = det.groups
    names = list(group.features.feature_names)  # type: ignore[union-attr]
    X = np.asarray(X, dtype=np.float64)
    step = int(group.features.interval * 1e6)  # type: ignore[union-attr]
    frame = pl.DataFrame({name: X[:, j] for j, name in enumerate(names)}).with_columns(
        pl.Series("ts", np.arange(len(X), dtype=np.int64) * step).cast(pl.Datetime("us")),
        pl.lit(service).alias("service"),
    )
    return det.fit({group.name: frame})


def _epoch_points(points: Any) -> list[tuple[float, str, str, float]]:
    import polars as pl

    frame = points.sort("ts", "service", "metric").with_columns(pl.col("ts").dt.epoch("us") / 1e6)
    return list(frame.select("ts", "service", "metric", "value").iter_rows())


def _online(det: Any, points: list[tuple[float, str, str, float]], chunk: int | None = None) -> list[Any]:
    states: dict[str, Any] = {}
    out: list[Any] = []
    step = chunk or len(points) or 1
    for start in range(0, len(points), step):
        out.extend(det.score(points[start : start + step], states))
    return out + det.flush(states)


def _key(scored: list[Any]) -> list[tuple[str, float, float]]:
    return sorted((s.service, s.ts, s.score) for s in scored)


def check_stream_online_equals_batch(factory: StreamFactory) -> None:
    """``score`` one point at a time (then ``flush``) equals ``score_history``, bit for bit."""
    det, points = factory()
    if det.config.refit is not None:
        return  # a model per series has no batch execution: its online path is the only one
    online = _online(det, _epoch_points(points), chunk=1)
    batch = det.score_history(points)
    got = [(s, round(t * 1e6), v) for s, t, v in _key(online)]
    want = sorted(zip(batch["service"], batch["ts"].dt.epoch("us"), batch["score"], strict=True))
    assert len(got) == len(want), f"online scored {len(got)} rows, batch {len(want)}"
    assert got == [(s, t, v) for s, t, v in want], "online scores differ from batch scores"


def check_stream_chunking(factory: StreamFactory) -> None:
    """Any split of the points into ``score`` calls gives the same scores (micro-batching is free)."""
    det, points = factory()
    rows = _epoch_points(points)
    whole = _key(_online(det, rows))
    for chunk in (7, 250):  # one point at a time is check_stream_online_equals_batch
        assert _key(_online(det, rows, chunk)) == whole, f"scores change with chunks of {chunk} points"


def check_stream_state_roundtrip(factory: StreamFactory) -> None:
    """Snapshot every series' state to bytes mid-stream, restore into new states: identical scores."""
    det, points = factory()
    rows = _epoch_points(points)
    cut = len(rows) * 2 // 3
    states: dict[str, Any] = {}
    head = det.score(rows[:cut], states)
    blobs = {series: det.state_to_bytes(state) for series, state in states.items()}
    restored = {series: det.state_from_bytes(blob) for series, blob in blobs.items()}
    again = {series: det.state_to_bytes(state) for series, state in restored.items()}
    assert again == blobs, "a restored state does not serialise to the bytes it was restored from"
    tail = det.score(rows[cut:], restored) + det.flush(restored)
    assert _key(head + tail) == _key(_online(det, rows)), "scores after a restore differ"


def check_stream_save_load(factory: StreamFactory) -> None:
    """The artifact's files load into a detector that scores identically."""
    from engine.detectors.artifact import from_files, to_files

    det, points = factory()
    rows = _epoch_points(points)
    loaded = from_files(to_files(det))
    assert loaded.threshold_ == det.threshold_, "the threshold changed through save/load"
    assert _key(_online(loaded, rows)) == _key(_online(det, rows)), "scores changed after save/load"


def check_stream_refuses_a_row_alone(factory: StreamFactory) -> None:
    """A closed row with non-finite features is refused and counted; every other row scores as if
    it had never been there."""
    det, points = factory()
    rows = _epoch_points(points)
    states: dict[str, Any] = {}
    closed = det.feed(rows, states) + det.close(states)
    victim = len(closed) // 2
    state, row = closed[victim]
    bad = row._replace(values=tuple(math.nan for _ in row.values))
    refused_before = state.refused
    clean_states: dict[str, Any] = {}
    clean = det.feed(rows, clean_states) + det.close(clean_states)
    del clean[victim]
    states = {}
    closed = det.feed(rows, states) + det.close(states)
    closed[victim] = (closed[victim][0], bad)
    scored = det.score_rows(closed)
    assert scored[victim] is None, "a row with NaN features was scored"
    assert closed[victim][0].refused == refused_before + 1, "the refused row was not counted"
    others = [s for i, s in enumerate(scored) if i != victim]
    assert _key(others) == _key(det.score_rows(clean)), "refusing one row changed other rows' scores"


def check_stream_far_value_scores_top(factory: StreamFactory) -> None:
    """A value far outside anything seen (a finite 1e308) puts its row at the top score, whatever the
    model, and every score stays finite."""
    det, points = factory()
    rows = _epoch_points(points)
    service = rows[-1][1]
    last: dict[str, float] = {m: v for _, s, m, v in rows if s == service}
    base = (max(r[0] for r in rows) // 3600 + 1) * 3600  # a fresh bucket whatever the interval
    first = sorted(last)[0]
    spike = [(base + 1.0, service, m, 1e308 if m == first else v) for m, v in sorted(last.items())]
    after = [(base + k * 600.0, service, m, v) for k in (1, 2) for m, v in sorted(last.items())]
    scored = _online(det, [*rows, *spike, *after])
    hit = [s for s in scored if s.service == service and s.ts <= base + 1.0 < s.window_end]
    assert hit, "the row of the spike's bucket was not scored (refused?)"
    assert hit[0].score == 1.0, f"a value of 1e308 scored {hit[0].score}, not the top"
    assert all(math.isfinite(s.score) for s in scored), "a score is not finite"


STREAM_CHECKS: list[Callable[[StreamFactory], None]] = [
    check_stream_online_equals_batch,
    check_stream_chunking,
    check_stream_state_roundtrip,
    check_stream_save_load,
    check_stream_refuses_a_row_alone,
    check_stream_far_value_scores_top,
]
"""Every check a stream detector configuration must pass."""


def check_stream(
    factory: StreamFactory, checks: Sequence[Callable[[StreamFactory], None]] = STREAM_CHECKS
) -> None:
    """Run every stream check; the first failure raises AssertionError prefixed with the check's name."""
    _run_checks(factory, checks)
