"""Event-level metrics against hand-computed cases, edge cases included."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pytest

from engine.errors import EvaluationError
from engine.evaluation.events import EventMetrics, alarm_events, event_metrics

T0 = np.datetime64("2026-01-01T00:00:00", "us")


def minutes(n: int) -> np.ndarray:
    """ts every minute for n minutes."""
    return T0 + np.arange(n) * np.timedelta64(60, "s")


def at(minute: float) -> np.datetime64:
    return T0 + np.timedelta64(int(minute * 60), "s")


def flags(n: int, *on: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[list(on)] = True
    return out


def test_hand_computed_case() -> None:
    """1 day of minutes; windows [100,120] and [500,520] and [900,910]; alarms:
    105-107 (one event, detects window 1, delay 5 min), 300 (false), 520 (detects window 2 on its
    last minute, delay 20 min), window 3 missed."""
    n = 1441
    m = event_metrics(
        minutes(n),
        flags(n, 105, 106, 107, 300, 520),
        [(at(100), at(120)), (at(500), at(520)), (at(900), at(910))],
    )
    assert m == EventMetrics(
        precision=2 / 3,
        recall=2 / 3,
        f1=2 / 3,
        mean_delay_s=(300 + 1200) / 2,
        median_delay_s=750.0,
        false_alarms_per_day=1.0,
        n_windows=3,
        n_detected=2,
        n_alarm_events=3,
        n_false_alarm_events=1,
    )
    assert m.as_dict()["n_detected"] == 2


def test_no_windows() -> None:
    n = 1441
    m = event_metrics(minutes(n), flags(n, 10, 11, 500), [])
    assert (m.precision, m.recall, m.f1) == (0.0, 1.0, 0.0)
    assert m.false_alarms_per_day == 2.0
    assert math.isnan(m.mean_delay_s) and math.isnan(m.median_delay_s)
    quiet = event_metrics(minutes(n), flags(n), [])
    assert (quiet.precision, quiet.recall, quiet.f1, quiet.false_alarms_per_day) == (1.0, 1.0, 1.0, 0.0)


def test_no_alarms() -> None:
    n = 100
    m = event_metrics(minutes(n), flags(n), [(at(10), at(20))])
    assert (m.precision, m.recall, m.f1) == (1.0, 0.0, 0.0)
    assert (m.n_alarm_events, m.n_detected, m.false_alarms_per_day) == (0, 0, 0.0)


def test_alarm_event_spanning_two_windows_is_one_true_event_detecting_both() -> None:
    n = 100
    m = event_metrics(minutes(n), flags(n, *range(15, 36)), [(at(10), at(20)), (at(30), at(40))])
    assert (m.n_alarm_events, m.n_detected, m.precision, m.recall) == (1, 2, 1.0, 1.0)
    assert m.mean_delay_s == (5 * 60 + 0) / 2


def test_alarm_before_the_window_counts_only_with_early_tolerance() -> None:
    n = 100
    ts, alarms, windows = minutes(n), flags(n, 8), [(at(10), at(20))]
    strict = event_metrics(ts, alarms, windows)
    assert (strict.recall, strict.precision) == (0.0, 0.0)
    early = event_metrics(ts, alarms, windows, early_tolerance_s=180)
    assert (early.recall, early.precision, early.mean_delay_s) == (1.0, 1.0, -120.0)


def test_window_edges_are_inclusive_and_the_first_alarm_sets_the_delay() -> None:
    n = 100
    m = event_metrics(minutes(n), flags(n, 10, 14, 20), [(at(10), at(20))])
    assert (m.recall, m.mean_delay_s, m.n_alarm_events, m.precision) == (1.0, 0.0, 3, 1.0)


def test_merge_gap_joins_nearby_runs() -> None:
    ts = minutes(30)
    alarms = flags(30, 1, 2, 5, 6, 20)
    assert alarm_events(ts.astype(np.int64), alarms) == [(1, 2), (5, 6), (20, 20)]
    assert alarm_events(ts.astype(np.int64), alarms, merge_gap_s=180) == [(1, 6), (20, 20)]
    m = event_metrics(ts, alarms, [(at(5), at(6))], merge_gap_s=180)
    assert (m.n_alarm_events, m.precision) == (2, 0.5)


def test_consecutive_points_merge_even_across_a_data_gap() -> None:
    ts = np.array([T0, T0 + np.timedelta64(1, "D"), T0 + np.timedelta64(2, "D")])
    m = event_metrics(ts, [True, True, False], [])
    assert m.n_alarm_events == 1
    assert m.false_alarms_per_day == 0.5


def test_accepts_python_datetimes_and_other_units() -> None:
    ts = minutes(10).astype("datetime64[s]")
    m = event_metrics(ts, flags(10, 3), [(datetime(2026, 1, 1, 0, 2), datetime(2026, 1, 1, 0, 4))])
    assert (m.recall, m.mean_delay_s) == (1.0, 60.0)


def test_bad_input_is_an_evaluation_error() -> None:
    with pytest.raises(EvaluationError, match="10 values but alarms has 9"):
        event_metrics(minutes(10), flags(9), [])
    with pytest.raises(EvaluationError, match="not sorted"):
        event_metrics(minutes(10)[::-1], flags(10), [])
    with pytest.raises(EvaluationError, match=r"windows\[0\] ends before it starts"):
        event_metrics(minutes(10), flags(10), [(at(5), at(3))])


def test_single_point_series_has_no_rate() -> None:
    m = event_metrics(minutes(1), [True], [])
    assert math.isnan(m.false_alarms_per_day)
