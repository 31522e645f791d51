"""Plots logged with every configuration run (matplotlib, Agg backend: no display needed).

Kept out of notebooks so that a notebook and a sweep draw the same picture from the same code.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.tracking.assessment import SeriesScores


def _pyplot() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scores_figure(series: Sequence[SeriesScores], threshold: float, title: str = "") -> Any:
    """Calibrated scores over time per series, incident windows shaded, threshold dashed."""
    plt = _pyplot()
    n = max(1, len(series))
    fig, axes = plt.subplots(n, 1, figsize=(11, 1.8 * n + 0.8), sharex=True, squeeze=False)
    for ax, s in zip(axes[:, 0], series, strict=False):
        ax.plot(*_peaks(s.ts, s.scores), lw=0.6, color="tab:blue")
        for start, end in s.windows:
            ax.axvspan(start, end, color="tab:red", alpha=0.2, lw=0)
        alarm_ts = s.ts[s.alarms]
        if len(alarm_ts):
            ax.plot(alarm_ts, s.scores[s.alarms], "|", color="black", ms=6)
        ax.axhline(threshold, color="tab:orange", ls="--", lw=0.8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(s.name, rotation=0, ha="right", fontsize=8)
    axes[0, 0].set_title(title or "calibrated score (red: incident windows, dashed: threshold)", fontsize=9)
    fig.tight_layout()
    return fig


def _peaks(ts: np.ndarray, scores: np.ndarray, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` per line, keeping each bin's maximum so that no spike disappears
    (drawing 20k points per panel made plotting the slowest part of a cheap configuration)."""
    n = len(scores)
    if n <= max_points:
        return ts, scores
    size = -(-n // max_points)
    cut = n - n % size
    idx = np.arange(0, cut, size)
    peaks = scores[:cut].reshape(-1, size).max(axis=1)
    if cut < n:
        idx = np.append(idx, cut)
        peaks = np.append(peaks, scores[cut:].max())
    return ts[idx], peaks


def pr_figure(series: Sequence[SeriesScores], title: str = "") -> Any:
    """Point-level precision-recall curve of the calibrated scores against window membership."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    labels = np.concatenate([s.labels() for s in series]) if series else np.empty(0, dtype=bool)
    scores = np.concatenate([s.scores for s in series]) if series else np.empty(0)
    if labels.any() and (~labels).any():
        precision, recall, _ = precision_recall_curve(labels, scores)
        ap = average_precision_score(labels, scores)
        ax.plot(recall, precision, lw=1.2)
        ax.set_title(title or f"precision-recall (AP={ap:.3f})", fontsize=9)
    else:
        ax.set_title("precision-recall: no labelled points in the test period", fontsize=9)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    fig.tight_layout()
    return fig


def figure_files(series: Sequence[SeriesScores], threshold: float, title: str = "") -> dict[str, bytes]:
    """scores.png and precision_recall.png as bytes: a worker (a process or a Ray task on another
    machine) hands them back with its result, and the parent logs them."""
    plt = _pyplot()
    out = {}
    for name, fig in (
        ("scores.png", scores_figure(series, threshold, title)),
        ("precision_recall.png", pr_figure(series)),
    ):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        out[name] = buffer.getvalue()
    return out
