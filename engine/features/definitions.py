"""The one definition of every transform, written twice side by side: per bucket and vectorised.

Both executions see, per (service, metric), the sequence of *observed* bucket values
x_1, x_2, ... (a bucket with no point for the metric is simply absent: windows count buckets that
exist, so a gap neither resets warm-up nor shrinks a window). At observed bucket i:

=========  ==========================================================================  ==========
transform  value                                                                       needs
=========  ==========================================================================  ==========
raw        x_i                                                                         1 bucket
mean W     S(x_{i-W+1..i}) / W                                                          W
std W      sqrt(S((x_j - m)^2) / W), m = mean of the same window (ddof = 0)            W
zscore W   (x_i - m) / s over the W buckets *before* i; 0 when the scale is 0          W + 1
diff k     x_i - x_{i-k}                                                               k + 1
quantile   numpy's default ('linear', method 7) over x_{i-W+1..i}                      W
ratio W    (x_i + eps) / (m + eps), m = mean of the W buckets before i; 1.0 if den=0   W + 1
=========  ==========================================================================  ==========

``S`` is a plain left-to-right IEEE sum starting at 0.0, recomputed over the window for every
bucket (no running sum, so nothing drifts over long series). Both executions perform the same
floating-point operations in the same order, which is why online and batch agree bitwise, not
just to 1e-9. z-score scale: s counts as 0 when s <= 1e-10 * |m| (a constant window whose mean
is off by rounding), then ``max(s, min_std)``; a zero scale gives z = 0.

Per-bucket aggregation (mean/sum) sums the bucket's values in ascending order, so the result does
not depend on the order points arrived in. The aggregated value is then clamped to
[-VALUE_LIMIT, VALUE_LIMIT]: a finite but absurd point (``1e308``) would otherwise overflow a window
sum or a squared deviation to inf, and the row would be lost; clamped, every transform stays finite
(the squares of 1e100 are 1e200) and the value is still far outside anything a metric reports, so
the detector's spatial rule puts it at the top.
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_left, insort
from collections.abc import Callable, Sequence
from functools import reduce

import numpy as np

from engine.features.spec import Diff, Mean, Quantile, Ratio, Raw, Std, TransformBase, ZScore

REL_SCALE_TOL = 1e-10
VALUE_LIMIT = 1e100
"""Aggregated bucket values are clamped to +-VALUE_LIMIT (see the module docstring)."""

OnlineKernel = Callable[[list[float], list[list[float]]], float]


def _plain_sum_is_builtin() -> bool:
    """CPython 3.11's ``sum`` adds floats left to right; 3.12 compensates (and would differ)."""
    return sum([1.0, 1e100, 1.0, -1e100], 0.0) == 0.0


if _plain_sum_is_builtin():
    seqsum = sum
else:  # pragma: no cover - depends on the interpreter

    def seqsum(values: Sequence[float], start: float = 0.0) -> float:  # type: ignore[misc]
        return reduce(operator.add, values, start)


# ---------------------------------------------------------------------------------- aggregation


def clamp(x: float) -> float:
    """``x`` limited to [-VALUE_LIMIT, VALUE_LIMIT] (inf from an overflowing sum included)."""
    if x > VALUE_LIMIT:
        return VALUE_LIMIT
    if x < -VALUE_LIMIT:
        return -VALUE_LIMIT
    return x


def aggregate_online(kind: str, cell: list) -> float:
    """One bucket's value from its points (``cell`` holds values, or (ts, value) for ``last``)."""
    if kind in ("mean", "sum"):
        ordered = sorted(cell)
        total = seqsum(ordered[1:], ordered[0])
        return total / len(cell) if kind == "mean" else total
    if kind == "min":
        return min(cell)
    if kind == "max":
        return max(cell)
    if kind == "last":
        return max(cell)[1]  # latest ts; equal ts -> the larger value
    return float(len(cell))  # count


def sorted_segment_sums(values: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per segment, values[start:start+count] (each sorted ascending) summed left to right.

    The same additions ``aggregate_online`` does, vectorised across segments: step j adds the
    j-th value of every segment that has one. Segments are visited longest first so each step
    touches only the segments still running (total work = number of values).
    """
    sums = values[starts].astype(np.float64, copy=True)
    if len(counts) == 0:
        return sums
    order = np.argsort(-counts, kind="stable")
    neg_sorted = -counts[order]
    for j in range(1, int(counts.max())):
        k = int(np.searchsorted(neg_sorted, -j, side="left"))  # segments with count > j
        idx = order[:k]
        sums[idx] += values[starts[idx] + j]
    return sums


# ---------------------------------------------------------------------------------- online kernels


def online_kernel(t: TransformBase, quantile_slot: int) -> OnlineKernel:
    """A function of (history, sorted windows) -> value; history is at least ``t.span`` long."""
    if isinstance(t, Raw):
        return lambda h, _s: h[-1]
    if isinstance(t, Mean):
        w = t.window
        return lambda h, _s: seqsum(h[-w:], 0.0) / w
    if isinstance(t, Std):
        return _online_std(t.window)
    if isinstance(t, ZScore):
        return _online_zscore(t.window, t.min_std)
    if isinstance(t, Diff):
        lag = t.lag + 1
        return lambda h, _s: h[-1] - h[-lag]
    if isinstance(t, Quantile):
        return _online_quantile(t.window, t.q, quantile_slot)
    if isinstance(t, Ratio):
        return _online_ratio(t.window, t.eps)
    raise TypeError(f"no online kernel for {type(t).__name__}")  # pragma: no cover


def _online_std(w: int) -> OnlineKernel:
    def std(h: list[float], _s: list[list[float]]) -> float:
        win = h[-w:]
        m = seqsum(win, 0.0) / w
        return math.sqrt(seqsum([(x - m) * (x - m) for x in win], 0.0) / w)

    return std


def _online_zscore(w: int, min_std: float) -> OnlineKernel:
    def zscore(h: list[float], _s: list[list[float]]) -> float:
        base = h[-w - 1 : -1]
        m = seqsum(base, 0.0) / w
        sd = math.sqrt(seqsum([(x - m) * (x - m) for x in base], 0.0) / w)
        if sd <= REL_SCALE_TOL * abs(m):
            sd = 0.0
        if sd < min_std:
            sd = min_std
        return (h[-1] - m) / sd if sd > 0.0 else 0.0

    return zscore


def _online_ratio(w: int, eps: float) -> OnlineKernel:
    def ratio(h: list[float], _s: list[list[float]]) -> float:
        den = seqsum(h[-w - 1 : -1], 0.0) / w + eps
        return (h[-1] + eps) / den if den != 0.0 else 1.0

    return ratio


def quantile_position(w: int, q: float) -> tuple[int, float]:
    """Index below the quantile in a sorted window of ``w`` values and the fraction towards the next."""
    h = q * (w - 1)
    lo = min(math.floor(h), w - 1)
    return lo, h - lo


def _online_quantile(w: int, q: float, slot: int) -> OnlineKernel:
    lo, g = quantile_position(w, q)
    if g == 0.0:
        return lambda _h, s: s[slot][lo]
    one_minus_g = 1.0 - g
    if g >= 0.5:  # numpy's _lerp computes from the upper neighbour past the midpoint

        def upper(_h: list[float], s: list[list[float]]) -> float:
            a, b = s[slot][lo], s[slot][lo + 1]
            return b - (b - a) * one_minus_g

        return upper

    def lower(_h: list[float], s: list[list[float]]) -> float:
        a, b = s[slot][lo], s[slot][lo + 1]
        return a + (b - a) * g

    return lower


def slide_sorted(window: list[float], history: list[float], w: int) -> None:
    """Keep ``window`` = sorted(last ``w`` of ``history``) after ``history[-1]`` was appended."""
    insort(window, history[-1])
    if len(history) > w:
        del window[bisect_left(window, history[-w - 1])]


# ---------------------------------------------------------------------------------- batch kernels
# Each takes the observed bucket values of many series concatenated (v) and returns an array of the
# same length; entries whose window reaches before the start of their series are garbage and are
# masked by the caller (a row needs the metric's full span inside its own series).


def window_sums(v: np.ndarray, w: int) -> np.ndarray:
    """out[i] = v[i-w+1] + ... + v[i], left to right from 0.0; NaN for i < w-1."""
    n = len(v)
    out = np.full(n, np.nan)
    if n < w:
        return out
    acc = np.zeros(n - w + 1)
    for j in range(w):
        acc += v[j : n - w + 1 + j]
    out[w - 1 :] = acc
    return out


def window_sq_dev(v: np.ndarray, w: int, m: np.ndarray) -> np.ndarray:
    """out[i] = sum over the window ending at i of (v_j - m[i])^2, left to right from 0.0."""
    n = len(v)
    out = np.full(n, np.nan)
    if n < w:
        return out
    mm = m[w - 1 :]
    acc = np.zeros(n - w + 1)
    for j in range(w):
        d = v[j : n - w + 1 + j] - mm
        acc += d * d
    out[w - 1 :] = acc
    return out


def _shift(a: np.ndarray, k: int) -> np.ndarray:
    out = np.full(len(a), np.nan)
    if k < len(a):
        out[k:] = a[: len(a) - k]
    return out


def batch_kernel(t: TransformBase, v: np.ndarray) -> np.ndarray:
    """The transform over concatenated observed-bucket values (see the table in the module doc)."""
    with np.errstate(all="ignore"):
        if isinstance(t, Raw):
            return v.copy()
        if isinstance(t, Mean):
            return window_sums(v, t.window) / t.window
        if isinstance(t, Std):
            m = window_sums(v, t.window) / t.window
            return np.sqrt(window_sq_dev(v, t.window, m) / t.window)
        if isinstance(t, ZScore):
            w = t.window
            m_incl = window_sums(v, w) / w
            sd_incl = np.sqrt(window_sq_dev(v, w, m_incl) / w)
            m, sd = _shift(m_incl, 1), _shift(sd_incl, 1)
            sd = np.where(sd <= REL_SCALE_TOL * np.abs(m), 0.0, sd)
            sd = np.where(sd < t.min_std, t.min_std, sd)
            return np.where(sd > 0.0, (v - m) / sd, 0.0)
        if isinstance(t, Diff):
            return v - _shift(v, t.lag)
        if isinstance(t, Quantile):
            return _batch_quantile(v, t.window, t.q)
        if isinstance(t, Ratio):
            den = _shift(window_sums(v, t.window) / t.window, 1) + t.eps
            return np.where(den != 0.0, (v + t.eps) / den, 1.0)
    raise TypeError(f"no batch kernel for {type(t).__name__}")  # pragma: no cover


_QUANTILE_CHUNK = 65536


def _batch_quantile(v: np.ndarray, w: int, q: float) -> np.ndarray:
    n = len(v)
    out = np.full(n, np.nan)
    if n < w:
        return out
    lo, g = quantile_position(w, q)
    windows = np.lib.stride_tricks.sliding_window_view(v, w)
    for start in range(0, len(windows), _QUANTILE_CHUNK):  # bounded memory: chunk * w floats
        srt = np.sort(windows[start : start + _QUANTILE_CHUNK], axis=1)
        a = srt[:, lo]
        if g == 0.0:
            res = a
        else:
            b = srt[:, lo + 1]
            res = b - (b - a) * (1.0 - g) if g >= 0.5 else a + (b - a) * g
        out[w - 1 + start : w - 1 + start + len(res)] = res
    return out
