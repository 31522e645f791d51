"""The detector families of issue 8: conformance, honesty of the stateful ones, and what each is for."""

from __future__ import annotations

import copy
import itertools
import pickle

import numpy as np
import pytest

from engine.detectors import available_detectors, make_detector
from engine.detectors.cluster import KMeansDistance
from engine.detectors.drift import CUSUM, WindowShift
from engine.detectors.forecast import SeasonalResidual
from engine.errors import DetectorError, DetectorParamError, FeatureMismatchError
from engine.testing.detectors import CHECKS

SEASON = 24

FAMILY_CONFIGS: dict[str, tuple[str, dict]] = {
    "SeasonalResidual": ("SeasonalResidual", {"season": SEASON, "smooth": 2, "window": 4}),
    "SeasonalResidual-raw-window1": ("SeasonalResidual", {"season": SEASON, "window": 1, "clip": None}),
    "CUSUM": ("CUSUM", {"reference": 40, "gap": 5}),
    "CUSUM-seasonal": ("CUSUM", {"reference": 30, "season": SEASON, "tail": "upper"}),
    "WindowShift-psi": ("WindowShift", {"statistic": "psi", "window": 20, "reference": 60, "bins": 4}),
    "WindowShift-ks": ("WindowShift", {"statistic": "ks", "window": 20, "reference": 60, "bins": 4}),
    "KMeansDistance": ("KMeansDistance", {"n_clusters": 4}),
    "Ensemble-mean": (
        "Ensemble",
        {
            "combine": "mean",
            "members": [
                {"name": "SeasonalResidual", "params": {"season": SEASON, "window": 4}},
                {"name": "CUSUM", "params": {"reference": 40}, "features": ["f1", "f2"]},
                {"name": "HBOS"},
            ],
        },
    ),
    "Ensemble-max": (
        "Ensemble",
        {
            "combine": "max",
            "members": [
                {"name": "SeasonalResidual", "params": {"season": SEASON, "window": 4}},
                {"name": "KMeansDistance", "params": {"n_clusters": 3}},
            ],
        },
    ),
    "Ensemble-rank": (
        "Ensemble",
        {
            "combine": "rank",
            "members": [
                {"name": "WindowShift", "params": {"window": 20, "reference": 60, "bins": 4}},
                {"name": "IForest", "params": {"n_estimators": 25}},
            ],
        },
    ),
}


def _factory(label: str):
    name, params = FAMILY_CONFIGS[label]

    def build():
        return make_detector(name, params, random_state=0)

    build.__name__ = f"make_{label}"
    return build


@pytest.mark.parametrize(
    ("factory", "check"),
    [
        pytest.param(_factory(label), check, id=f"{label}:{check.__name__}")
        for label in FAMILY_CONFIGS
        for check in CHECKS
    ],
)
def test_conformance(factory, check) -> None:
    check(factory)


def test_families_are_registered_like_plugins() -> None:
    names = available_detectors()
    for name in ("SeasonalResidual", "CUSUM", "WindowShift", "KMeansDistance", "Ensemble"):
        assert name in names
    assert type(make_detector("SeasonalResidual", {"season": 5})).__name__ == "SeasonalResidual"


# ------------------------------------------------------------------------------------ seasonal data


def _seasonal(n_seasons: int, season: int = SEASON, seed: int = 0, cols: int = 2) -> np.ndarray:
    """A daily-like pattern per column plus noise: what a service's metrics look like."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_seasons * season)
    base = np.column_stack([10 + 3 * np.sin(2 * np.pi * t / season + c) for c in range(cols)])
    return base + 0.2 * rng.normal(size=base.shape)


SEQUENCE_FACTORIES = {
    "SeasonalResidual": lambda: SeasonalResidual(season=SEASON, smooth=3, window=5),
    "CUSUM": lambda: CUSUM(reference=20, gap=4, season=SEASON),
    "WindowShift": lambda: WindowShift(window=8, reference=30, gap=2, bins=5, season=SEASON),
    "Ensemble": lambda: make_detector(
        "Ensemble",
        {
            "members": [
                {"name": "SeasonalResidual", "params": {"season": SEASON, "window": 5}},
                {"name": "CUSUM", "params": {"reference": 20}},
            ]
        },
    ),
}


@pytest.mark.parametrize("label", list(SEQUENCE_FACTORIES))
def test_batch_equals_rows_and_any_chunking_over_long_runs(label: str) -> None:
    """Over several seasons (crossing the buffer's chunk boundaries), with an incident inside, the
    scores of one batch, of single rows and of uneven chunks are bitwise identical."""
    X = _seasonal(8)
    det = SEQUENCE_FACTORIES[label]().fit(X[: 4 * SEASON])
    Y = X[4 * SEASON :].copy()
    Y[30:50, 0] += 4.0  # an incident: the cleaning path (clip) runs too
    batch = copy.deepcopy(det).score(Y)
    one = copy.deepcopy(det)
    rows = np.concatenate([one.score(Y[i : i + 1]) for i in range(len(Y))])
    chunked = copy.deepcopy(det)
    cuts = [0, 1, 7, 30, 31, 70, len(Y)]
    chunks = np.concatenate([chunked.score(Y[a:b]) for a, b in itertools.pairwise(cuts)])
    np.testing.assert_array_equal(batch, rows)
    np.testing.assert_array_equal(batch, chunks)


@pytest.mark.parametrize("label", list(SEQUENCE_FACTORIES))
def test_no_look_ahead(label: str) -> None:
    """Changing rows after row k never changes the scores of rows up to k."""
    X = _seasonal(7)
    det = SEQUENCE_FACTORIES[label]().fit(X[: 4 * SEASON])
    Y = X[4 * SEASON :]
    altered = Y.copy()
    altered[40:] += 50.0
    a = copy.deepcopy(det).score(Y)
    b = copy.deepcopy(det).score(altered)
    np.testing.assert_array_equal(a[:40], b[:40])
    assert not np.array_equal(a[40:], b[40:])


def test_state_is_a_function_of_the_last_rows_only() -> None:
    """Finite memory: two forecasters fitted on different histories that then see the same
    ``memory_rows`` rows score everything after identically (a restart replays one memory)."""
    X = _seasonal(10, seed=1)
    other = _seasonal(10, seed=2)
    a = SeasonalResidual(season=SEASON, smooth=2, window=3, clip=None).fit(X[: 5 * SEASON])
    b = SeasonalResidual(season=SEASON, smooth=2, window=3, clip=None).fit(other[: 5 * SEASON])
    b.center_, b.scale_ = a.center_, a.scale_  # the constants are learned at fit; the state is not
    replay = X[5 * SEASON : 5 * SEASON + a.memory_rows]
    a.score(replay)
    b.score(replay)
    tail = X[5 * SEASON + a.memory_rows :]
    np.testing.assert_array_equal(a.score(tail), b.score(tail))


def test_memory_stays_bounded() -> None:
    det = SeasonalResidual(season=SEASON, window=5).fit(_seasonal(4))
    det.score(_seasonal(30, seed=3))
    assert det.history_.rows.shape == (SEASON, 2)
    assert det.residuals_.shape == (4, 2)
    cusum = CUSUM(reference=20, gap=4, season=SEASON).fit(_seasonal(4))
    cusum.score(_seasonal(30, seed=3))
    assert cusum.buffer_.shape == (24, 2) and cusum.seasonal_.rows.shape == (SEASON, 2)


# ------------------------------------------------------------------------------------ what they are for


def test_forecaster_sees_a_creep_that_stays_inside_the_daily_range() -> None:
    """A slow rise that never leaves the series' daily range: the seasonal residual flags it while
    a static detector on the raw value (IForest) stays below its own training extremes."""
    X = _seasonal(10, cols=1)
    train, test = X[: 6 * SEASON], X[6 * SEASON :].copy()
    rows = np.arange(len(test))
    creep = np.where((rows >= 36) & (rows < 46), (rows - 36) * 0.2, 0.0)  # +2 while the day is low
    test[:, 0] += creep
    det = SeasonalResidual(season=SEASON, smooth=1, window=4).fit(train)
    scores = det.score(test)
    assert scores[36:46].max() > 3 * np.quantile(det.train_scores_, 0.99)
    assert (test[:, 0] < train[:, 0].max()).all()  # never outside the range a static line learns
    iforest = make_detector("IForest", {"n_estimators": 50}).fit(train)
    assert iforest.score(test).max() <= iforest.score(train).max()


def test_cleaning_stops_an_incident_from_echoing_a_season_later() -> None:
    X = _seasonal(6, cols=1)
    Y = _seasonal(3, seed=5, cols=1)
    Y[5:15, 0] += 20.0  # an incident on the first scored day
    clean = SeasonalResidual(season=SEASON, window=1).fit(X)
    raw = SeasonalResidual(season=SEASON, window=1, clip=None).fit(X)
    echo_clean = clean.score(Y)[SEASON + 5 : SEASON + 15]
    echo_raw = raw.score(Y)[SEASON + 5 : SEASON + 15]
    assert echo_raw.min() > 50  # the recovery looks like a 20-unit drop against "yesterday"
    assert echo_clean.max() < 8  # at most clip (4) scales, plus noise


def test_tail_per_feature_pattern() -> None:
    X = _seasonal(5)
    det = SeasonalResidual(season=SEASON, window=1, tail={"f0": "upper", "f*": "lower"})
    det.fit(X[: 4 * SEASON], feature_names=["f0", "f1"])
    assert det.tails_.tolist() == [1, -1]
    down = X[4 * SEASON : 4 * SEASON + 1].copy()
    down[0, 0] -= 10.0  # a drop of f0: harmless by its tail
    assert det.score(down)[0] < 5


def test_cusum_catches_a_slow_decay_before_a_pointwise_threshold_and_dates_it() -> None:
    rng = np.random.default_rng(4)
    x = 0.86 + 0.004 * rng.normal(size=(900, 1))
    start = 600
    x[start:, 0] -= 0.0005 * np.arange(300)  # 0.125 sigma per row: invisible row by row at first
    det = CUSUM(reference=120, drift=0.5, tail="lower").fit(x[:start])
    threshold = det.train_scores_.max()
    scores, offsets = det.score_with_change(x[start:])
    first = int(np.argmax(scores > threshold))
    z = (x[start:, 0] - x[:start, 0].mean()) / x[:start, 0].std()
    first_pointwise = int(np.argmax(-z > -((x[:start, 0] - x[:start, 0].mean()) / x[:start, 0].std()).min()))
    assert 0 < first < first_pointwise
    change_point = first - offsets[first]
    assert abs(change_point) < 40  # the excursion began near the true start (row 0 of the test)


def test_window_shift_sees_a_change_of_spread() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(1200, 1))
    x[900:] *= 3.0  # same mean, three times the spread
    psi = WindowShift(window=60, reference=240, bins=8).fit(x[:900])
    ks = WindowShift(statistic="ks", window=60, reference=240, bins=8).fit(x[:900])
    # between the moment the recent window is full of the new spread and the moment the trailing
    # reference has filled with it too (then the new spread is the new normal)
    assert np.median(psi.score(x[900:])[60:240]) > np.quantile(psi.train_scores_, 0.99)
    assert np.median(ks.score(x[900:])[60:240]) > np.quantile(ks.train_scores_, 0.99)


def test_clustering_flags_a_combination_of_individually_normal_metrics() -> None:
    """Request rate and CPU move together in two regimes (night, day). A row with a day-time
    request rate and a night-time CPU is inside both marginal ranges: per-metric detectors call it
    normal, the distance to the nearest usual state does not."""
    rng = np.random.default_rng(0)
    regime = rng.random(2000) < 0.5
    rate = np.where(regime, 20.0, 60.0) + rng.normal(scale=3.0, size=2000)
    cpu = np.where(regime, 0.2, 0.6) + rng.normal(scale=0.03, size=2000)
    X = np.column_stack([rate, cpu])
    odd = np.array([[60.0, 0.2]])
    names = ["request_rate", "cpu_util"]
    kmeans = KMeansDistance(n_clusters=2, random_state=0).fit(X, feature_names=names)
    assert kmeans.score(odd)[0] > 3 * np.quantile(kmeans.train_scores_, 0.999)
    for name in ("NabZScore", "HBOS"):
        per_metric = make_detector(name).fit(X, feature_names=names)
        assert per_metric.score(odd)[0] < np.quantile(per_metric.score(X), 0.99), name


def test_kmeans_standardises_so_units_do_not_decide() -> None:
    """Without standardisation the request rate (tens) hides the CPU (fractions) completely."""
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(40, 5, 1000), rng.normal(0.4, 0.02, 1000)])
    cpu_spike = np.array([[40.0, 0.6]])  # 10 sigma on CPU, nothing on the rate
    scaled = KMeansDistance(n_clusters=3, random_state=0).fit(X)
    unscaled = KMeansDistance(n_clusters=3, standardize="none", random_state=0).fit(X)
    assert scaled.score(cpu_spike)[0] > 3 * np.quantile(scaled.train_scores_, 0.99)
    assert unscaled.score(cpu_spike)[0] < np.quantile(unscaled.train_scores_, 0.99)


# ------------------------------------------------------------------------------------ ensembles


def _ens(**params):
    base = {
        "members": [
            {"name": "SeasonalResidual", "params": {"season": SEASON, "window": 3}},
            {"name": "KMeansDistance", "params": {"n_clusters": 3}},
        ]
    }
    return make_detector("Ensemble", {**base, **params}, random_state=0)


def test_ensemble_combinations_order_as_defined() -> None:
    X = _seasonal(6)
    Y = _seasonal(1, seed=9)
    scores = {c: _ens(combine=c).fit(X).score(Y) for c in ("max", "mean")}
    assert (scores["max"] >= scores["mean"]).all() and (scores["max"] > scores["mean"]).any()
    assert ((scores["mean"] >= 0) & (scores["mean"] <= 1)).all()
    rank_g = _ens(combine="rank", calibration="gaussian").fit(X).score(Y)
    rank_e = _ens(combine="rank", calibration="ecdf").fit(X).score(Y)
    np.testing.assert_array_equal(rank_g, rank_e)  # rank ignores the calibration choice


def test_ensemble_member_features_and_sitting_out() -> None:
    X = _seasonal(5)
    det = make_detector(
        "Ensemble",
        {
            "members": [
                {"name": "SeasonalResidual", "params": {"season": SEASON}, "features": ["lat*"]},
                {"name": "CUSUM", "params": {"reference": 20}, "features": ["retrieval_*"]},
            ]
        },
    ).fit(X, feature_names=["latency", "cpu"])
    assert len(det.members_) == 1 and det.columns_[0].tolist() == [0]
    assert det.members_[0].n_features_in_ == 1
    with pytest.raises(DetectorParamError, match="no member matches"):
        make_detector("Ensemble", {"members": [{"name": "CUSUM", "features": ["nothing*"]}]}).fit(
            X, feature_names=["latency", "cpu"]
        )


def test_ensemble_validation_names_the_member() -> None:
    X = _seasonal(3)
    with pytest.raises(DetectorParamError, match="at least one detector"):
        make_detector("Ensemble").fit(X)
    with pytest.raises(DetectorParamError, match=r"members\[1\] has unknown key\(s\) \['parms'\]"):
        _ens(members=[{"name": "HBOS"}, {"name": "HBOS", "parms": {}}]).fit(X)
    with pytest.raises(DetectorError, match="did you mean 'CUSUM'"):
        _ens(members=[{"name": "CUSUMM"}]).fit(X)
    with pytest.raises(DetectorParamError, match="'combine' parameter of Ensemble"):
        _ens(combine="vote").fit(X)


def test_ensemble_params_rebuild_and_pickle() -> None:
    det = _ens(combine="max")
    params = det.get_params()
    params["members"][0]["params"]["window"] = 99  # a copy: the detector's own spec is untouched
    assert det.get_params()["members"][0]["params"]["window"] == 3
    X = _seasonal(5)
    det.fit(X)
    again = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(again.score(X[:10]), det.score(X[:10]))


# ------------------------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("det", "match"),
    [
        (
            SeasonalResidual(season=0),
            "The 'season' parameter of SeasonalResidual must be an int in the range",
        ),
        (SeasonalResidual(season=4, smooth=5), "'smooth' parameter of SeasonalResidual must be <= season"),
        (SeasonalResidual(season=4, tail="up"), "'tail' parameter of SeasonalResidual"),
        (SeasonalResidual(season=4, tail={"f*": "sideways"}), "values must be one of"),
        (CUSUM(drift=-1.0), "The 'drift' parameter of CUSUM"),
        (WindowShift(statistic="chi2"), "The 'statistic' parameter of WindowShift"),
        (KMeansDistance(standardize="zscore"), "The 'standardize' parameter of KMeansDistance"),
    ],
)
def test_bad_parameters_fail_at_fit_with_sklearn_wording(det, match: str) -> None:
    with pytest.raises(DetectorParamError, match=match):
        det.fit(_seasonal(3), feature_names=["f0", "f1"])


def test_unknown_parameter_fails_at_set_params_and_short_history_is_explained() -> None:
    with pytest.raises(DetectorParamError, match="windw"):
        make_detector("SeasonalResidual", {"windw": 3})
    with pytest.raises(DetectorError, match="needs at least 42 consecutive training rows"):
        SeasonalResidual(season=24, window=10).fit(_seasonal(1))
    with pytest.raises(FeatureMismatchError, match="NaN or inf"):
        SeasonalResidual(season=4).fit(np.full((40, 1), np.nan))
