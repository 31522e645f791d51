"""Point detectors: each sees its kind of anomaly, keeps explicit state, and joins an ensemble."""

from __future__ import annotations

import numpy as np
import pytest

from engine.detectors.point_ensemble import (
    LikelihoodEnsemble,
    available_point_detectors,
    make_point_detector,
    point_detector_from_bytes,
)
from engine.errors import DetectorError, DetectorParamError

STEP = 300.0


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(10.0, 1.0, n)


@pytest.mark.parametrize("name", available_point_detectors())
def test_state_round_trip_continues_exactly(name: str) -> None:
    x = _noise(900)
    x[600:] += 4
    det = make_point_detector(name)
    for i, v in enumerate(x[:500]):
        det.update(i * STEP, float(v))
    restored = point_detector_from_bytes(det.to_bytes())
    assert restored.params == det.params
    rest = list(enumerate(x[500:], start=500))
    a = [det.update(i * STEP, float(v)) for i, v in rest]
    b = [restored.update(i * STEP, float(v)) for i, v in rest]
    assert a == b
    assert all(0.0 <= s <= 1.0 for s in a)


@pytest.mark.parametrize("name", available_point_detectors())
def test_bad_parameters_and_states_are_refused_with_hints(name: str) -> None:
    with pytest.raises(DetectorParamError, match="unknown parameter"):
        make_point_detector(name, {"nope": 1})
    with pytest.raises(DetectorParamError):
        make_point_detector(name, {next(iter(make_point_detector(name).params)): -1})
    with pytest.raises(DetectorError, match="cannot be read"):
        point_detector_from_bytes(b'{"format": 1, "name": "' + name.encode() + b'"}')
    with pytest.raises(DetectorParamError, match="choose among"):
        make_point_detector("Nope")


def test_context_novelty_is_quiet_on_a_repeated_pattern_and_loud_on_a_new_one() -> None:
    det = make_point_detector("ContextNovelty", {"bins": 4, "depth": 3})
    pattern = [0.0, 1.0, 2.0, 3.0, 2.0, 1.0]
    scores = [det.update(i * STEP, pattern[i % 6]) for i in range(600)]
    assert max(scores[100:]) == 0.0  # every context repeats
    new = [det.update((600 + i) * STEP, v) for i, v in enumerate([2.0, 3.0, 0.0])]
    assert new[2] == 2 / 3  # 3 -> 0 never happened: two of its three contexts are new


def test_seasonal_profile_knows_the_hour_of_day() -> None:
    hours = np.arange(24 * 12 * 14) * STEP  # two weeks of 5-minute points
    daily = 10 + 5 * np.sin(2 * np.pi * hours / 86_400) + np.random.default_rng(1).normal(0, 0.2, len(hours))
    det = make_point_detector("SeasonalProfile")
    scores = [det.update(float(t), float(v)) for t, v in zip(hours, daily, strict=True)]
    assert np.quantile(scores[-288:], 0.99) < 0.5
    t = hours[-1] + 6 * 3600  # 6 h later, where the daily high sits; send the daily low instead
    low = 10 + 5 * np.sin(2 * np.pi * (t + 12 * 3600) / 86_400)
    assert det.update(float(t), float(low)) == 1.0  # within the range, wrong for the hour


def test_level_shift_fires_at_the_shift_then_settles() -> None:
    x = _noise(1000)
    x[700:] += 3
    det = make_point_detector("LevelShift")
    scores = np.array([det.update(i * STEP, float(v)) for i, v in enumerate(x)])
    assert scores[100:700].max() < 1.0
    first = int(np.argmax(scores >= 1.0))
    assert 700 <= first <= 710
    assert np.mean(scores[800:]) < 0.3


def test_spectral_residual_ranks_a_spike_above_the_noise() -> None:
    x = _noise(1200)
    x[1000] += 10
    det = make_point_detector("SpectralResidual", {"scale": 1000.0})
    scores = np.array([det.update(i * STEP, float(v)) for i, v in enumerate(x)])
    assert (scores[:63] == 0).all()  # the window fills first
    assert scores[1000] > np.quantile(scores[64:1000], 0.999)


def _spectral_residual_by_the_paper(window: np.ndarray, q: int, z: int, m: int, scale: float) -> float:
    """Ren et al. 2019, section 3.2, transcribed directly: the score of the newest value of
    ``window`` (what the detector's faster arrangement must give, bit for bit)."""
    n = len(window)
    gradient = float(np.mean((window[-1] - window[-1 - np.arange(1, m + 1)]) / np.arange(1, m + 1)))
    extended = np.concatenate([window, np.full(m, window[-m] + gradient * m)]) - window.mean()
    spectrum = np.fft.fft(extended)
    amplitude = np.abs(spectrum)
    log_amp = np.log(np.maximum(amplitude, 1e-8))
    residual = log_amp - np.convolve(log_amp, np.ones(q) / q, mode="same")
    phase = spectrum / np.maximum(amplitude, 1e-8)
    saliency = np.abs(np.fft.ifft(np.exp(residual) * phase))
    local = float(saliency[n - 1 - z : n - 1].mean())
    return 0.0 if local <= 1e-12 else min(max((saliency[n - 1] - local) / local, 0.0) / scale, 1.0)


@pytest.mark.parametrize("params", [{}, {"window": 32, "q": 5, "z": 7, "m": 3, "scale": 2.0}])
def test_spectral_residual_scores_what_the_paper_defines(params: dict[str, float]) -> None:
    x = _noise(700, seed=3)
    x[::97] += 8
    det = make_point_detector("SpectralResidual", params)
    p = det.params
    for i, v in enumerate(x):
        got = det.update(i * STEP, float(v))
        if i + 1 >= p["window"]:
            want = _spectral_residual_by_the_paper(
                x[i + 1 - p["window"] : i + 1], p["q"], p["z"], p["m"], p["scale"]
            )
            assert got == want, f"point {i}"
        if i == 400:
            det = point_detector_from_bytes(det.to_bytes())


def test_ensemble_is_the_largest_member_likelihood_and_learns_silently() -> None:
    x = _noise(800)
    x[700:] += 4
    members = [make_point_detector("LevelShift"), make_point_detector("ContextNovelty")]
    ens = LikelihoodEnsemble(members, columns=[0, 1])
    solo = [
        LikelihoodEnsemble([make_point_detector("LevelShift")]),
        LikelihoodEnsemble([make_point_detector("ContextNovelty")]),
    ]
    for i, v in enumerate(x):
        learning = i < 300
        got = ens.update(i * STEP, (float(v), float(-v)), learning=learning)
        parts = [solo[0].update(i * STEP, (float(v),), learning=learning)]
        parts.append(solo[1].update(i * STEP, (float(-v),), learning=learning))
        assert got == (0.0 if learning else max(parts))


def test_ensemble_state_round_trip_continues_exactly() -> None:
    x = _noise(900)
    x[600:] += 4

    def fresh() -> LikelihoodEnsemble:
        return LikelihoodEnsemble([make_point_detector(n) for n in available_point_detectors()])

    ens = fresh()
    for i, v in enumerate(x[:500]):
        ens.update(i * STEP, (float(v),), learning=i < 200)
    restored = fresh()
    restored.restore(ens.state())
    rest = list(enumerate(x[500:], start=500))
    assert [ens.update(i * STEP, (float(v),)) for i, v in rest] == [
        restored.update(i * STEP, (float(v),)) for i, v in rest
    ]
    with pytest.raises(DetectorError, match="holds 4 point detector"):
        LikelihoodEnsemble([make_point_detector("LevelShift")]).restore(ens.state())
