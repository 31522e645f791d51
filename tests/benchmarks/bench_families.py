"""Live cost of the detector families: one new row per service at the platform's 10-second interval.

The engine feeds each service's sequence detector one row at a time; the figure is the cost of that
call with a full daily season in memory (8,640 rows x 10 metrics), the baseline is IForest (100
trees) scoring the same single row, measured in the same run. The note gives the per-row cost inside
a batch of 1,000 (what an offline evaluation pays).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from harness import Row

from engine.detectors import make_detector

SEASON, N_FEATURES, SINGLES, BATCH = 8640, 10, 50, 1000
FAMILIES = {
    "SeasonalResidual": {"season": SEASON, "smooth": 30, "window": 30},
    "CUSUM": {"reference": 360, "season": SEASON},
    "WindowShift": {"window": 60, "reference": 720, "gap": 60, "season": SEASON},
    "KMeansDistance": {"n_clusters": 8},
}


def _seasonal(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return 10 + 3 * np.sin(2 * np.pi * t / SEASON + np.arange(N_FEATURES)) + rng.normal(size=(n, N_FEATURES))


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def single_row_cost(repeats: int) -> list[Row]:
    X = _seasonal(2 * SEASON + 500, 0)
    Y = _seasonal(SINGLES + BATCH, 1)
    iforest = make_detector("IForest", {"n_estimators": 100}).fit(X)
    rows = []
    for name, params in FAMILIES.items():
        det = make_detector(name, params).fit(X)
        figure, baseline, batch = [], [], []
        for _ in range(repeats):
            figure.append(
                statistics.median(_ms(lambda i=i, det=det: det.score(Y[i : i + 1])) for i in range(SINGLES))
            )
            baseline.append(
                statistics.median(_ms(lambda i=i: iforest.score(Y[i : i + 1])) for i in range(SINGLES))
            )
            batch.append(_ms(lambda det=det: det.score(Y[SINGLES:])) / BATCH)
        rows.append(
            Row(
                figure=f"{name} score, one live row",
                unit="ms/row",
                samples=figure,
                baseline="IForest(100) score, one row",
                baseline_samples=baseline,
                higher_is_better=False,
                note=f"batch of {BATCH}: {statistics.median(batch):.4f} ms/row",
            )
        )
    return rows


BENCHMARKS = [single_row_cost]
