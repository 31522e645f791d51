"""Per-row scoring cost of the built-in detectors: one row at a time vs a batch of 1000.

The engine scores in micro-batches; this shows what a lone row costs against the per-row cost inside
a batch (the baseline, measured in the same run on the same fitted detector). Training data: 10,000
rows x 10 features (two weeks of one service at 2-minute features). ECOD and COPOD are scored row
by row even inside a batch (their PyOD scores depend on the batch, see pyod_adapter.ROW_WISE), so
their batch gains little; the note gives PyOD's raw transductive batch cost for comparison.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
from harness import Row

from engine.detectors import make_detector
from engine.detectors.pyod_adapter import ROW_WISE

NAMES = ["IForest", "HBOS", "ECOD", "COPOD", "PCA", "KNN", "LOF"]
N_TRAIN, N_FEATURES, BATCH, SINGLES = 10_000, 10, 1000, 30


def _ms_per_row(fn: Callable[[], object], rows: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000 / rows


def per_row_cost(repeats: int) -> list[Row]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_TRAIN, N_FEATURES))
    Y = rng.normal(size=(BATCH, N_FEATURES))
    rows = []
    for name in NAMES:
        det = make_detector(name).fit(X)
        det.score(Y[:5])  # warm caches / JIT
        single, batch = [], []
        for _ in range(repeats):
            one = [_ms_per_row(lambda i=i, det=det: det.score(Y[i : i + 1]), 1) for i in range(SINGLES)]
            single.append(statistics.median(one))
            batch.append(_ms_per_row(lambda det=det: det.score(Y), BATCH))
        note = ""
        if name in ROW_WISE:
            raw = _ms_per_row(lambda det=det: det.estimator_.decision_function(Y), BATCH)
            note = f"row-wise; PyOD's transductive batch: {raw:.3f} ms/row"
        rows.append(
            Row(
                figure=f"{name} score, single row",
                unit="ms/row",
                samples=single,
                baseline=f"{name} batch of {BATCH}, per row",
                baseline_samples=batch,
                higher_is_better=False,
                note=note,
            )
        )
    return rows


BENCHMARKS = [per_row_cost]
