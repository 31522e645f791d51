"""Probe rows: a few fixed feature rows and the scores the detector gave them when the bundle was built.

Why: version rules can only guess whether a pickled detector behaves the same under other library
versions. Replaying recorded rows after loading and comparing the scores is a direct check, so
``load_bundle`` refuses a detector that would score differently here than where it was promoted.
The rows are drawn from a seeded generator at a few magnitudes (no telemetry is needed at build
time) and stored in the manifest; raw scores are compared as well as calibrated ones because
calibrated scores saturate at 1 for far-off rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

N_ROWS = 8
SEED = 20240229
RTOL = 1e-6
ATOL = 1e-9
SCALES = (1.0, 10.0, 100.0, 1000.0)


def make_probe(pipeline: Any) -> dict[str, Any]:
    """Rows in feature order plus the pipeline's raw and calibrated scores for them."""
    n = len(pipeline.feature_names)
    rows = np.random.default_rng(SEED).normal(size=(N_ROWS, n))
    rows *= np.array(SCALES)[np.arange(N_ROWS) % len(SCALES), None]  # metrics live on many scales
    rows[0] = 0.0
    return {
        "rows": rows.tolist(),
        "raw": pipeline.raw_scores(rows).tolist(),
        "scores": pipeline.score_matrix(rows).tolist(),
    }


def probe_mismatch(pipeline: Any, probe: dict[str, Any]) -> str | None:
    """None when the pipeline reproduces the recorded scores, else what differs."""
    rows = np.asarray(probe["rows"], dtype=np.float64)
    for key, fn in (("raw", pipeline.raw_scores), ("scores", pipeline.score_matrix)):
        want = np.asarray(probe[key], dtype=np.float64)
        got = np.asarray(fn(rows), dtype=np.float64)
        if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True):
            worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
            return f"{key} scores of the probe rows differ from build time (max abs diff {worst:.3g})"
    return None
