"""Probe rows: a few fixed feature rows and the scores the detector gave them when the bundle was built.

Why: version rules can only guess whether a saved model behaves the same under other library
versions. Replaying recorded rows after loading and comparing the scores is a direct check, so
``load_bundle`` refuses a detector that would score differently here than where it was promoted.
Each metric group whose model was fitted on history gets its own rows, drawn from a seeded generator at a
few magnitudes (no telemetry is needed at build time) and stored in the manifest; raw scores are
compared as well as calibrated ones because calibrated scores saturate at 1 for far-off rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

N_ROWS = 8
SEED = 20240229
RTOL = 1e-6
ATOL = 1e-9
SCALES = (1.0, 10.0, 100.0, 1000.0)


def make_probe(detector: Any) -> dict[str, Any]:
    """Per group with a fitted model: rows in its feature order and the model's raw and [0, 1] scores."""
    out = {}
    for group in detector.fitted_groups:
        n = len(detector.group_features(group))
        rows = np.random.default_rng(SEED).normal(size=(N_ROWS, n))
        rows *= np.array(SCALES)[np.arange(N_ROWS) % len(SCALES), None]  # metrics live on many scales
        rows[0] = 0.0
        raw, scores = detector.model_scores(group, rows)
        out[group] = {"rows": rows.tolist(), "raw": raw.tolist(), "scores": scores.tolist()}
    return out


def probe_mismatch(detector: Any, probe: dict[str, Any]) -> str | None:
    """None when the detector reproduces the recorded scores, else what differs."""
    fitted = sorted(detector.fitted_groups)
    if sorted(probe) != fitted:
        return f"probe groups {sorted(probe)} are not the detector's fitted groups {fitted}"
    for group, recorded in probe.items():
        rows = np.asarray(recorded["rows"], dtype=np.float64)
        raw, scores = detector.model_scores(group, rows)
        for key, got in (("raw", raw), ("scores", scores)):
            want = np.asarray(recorded[key], dtype=np.float64)
            if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True):
                worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
                what = f"{key} scores of group {group!r}'s probe rows"
                return f"{what} differ from build time (max abs diff {worst:.3g})"
    return None
