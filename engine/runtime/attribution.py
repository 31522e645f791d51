"""Which metrics an anomaly event names as contributing: one definition for the engine and replay.

A row's contributing features are those furthest (|z|) from the service's recent normal, an
exponentially weighted mean and variance of its non-anomalous rows. Policies match on these names
(``when.contributing``), so the shadow replay must name exactly what the live engine would.
"""

from __future__ import annotations

import numpy as np

EWMA = 0.05
"""Weight of a new normal row in the per-service baseline."""
TOP = 3
"""How many features an event names."""


class Attribution:
    """Per-service EWMA baselines of normal rows; call it once per scored row, in time order."""

    def __init__(self, feature_names: list[str]) -> None:
        self.names = list(feature_names)
        self.base: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, service: str, x: np.ndarray, anomalous: bool) -> tuple[tuple[str, float], ...]:
        """The top features by |z| for an anomalous row (and no update); a normal row updates the baseline."""
        base = self.base.get(service)
        if base is None:
            self.base[service] = (x.copy(), np.zeros_like(x))
            return ()
        mean, var = base
        if anomalous:
            z = np.abs(x - mean) / np.sqrt(var + 1e-12)
            top = np.argsort(-z)[:TOP]
            return tuple((self.names[j], round(float(z[j]), 3)) for j in top if np.isfinite(z[j]))
        delta = x - mean
        self.base[service] = (mean + EWMA * delta, (1 - EWMA) * (var + EWMA * delta * delta))
        return ()
