"""Operators' word back into research: alarms marked false and rejected approvals, exported into a
real DuckDB store as `selfheal journal export --to-store` writes them, are negative labels of the
sweep's evaluation. A candidate that fires in those windows is charged for it: the alarms count
(`operator_false_alarms`), are false even where an incident window says otherwise, and change the
data's fingerprint (a champion judged before the labels is not comparable)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_tracking_support import make_home, small_spec, write_spec

from engine.evaluation.events import alarm_events
from engine.runtime.outcomes import LABELS_SCHEMA, OUTCOMES_SCHEMA
from engine.telemetry.store import TelemetryStore
from engine.tracking.experiment import evaluate_config, prepare
from engine.tracking.spec import load_spec


def _events(result, prepared, *, inside_incident: bool) -> list[tuple[str, object, object]]:  # type: ignore[no-untyped-def]
    """(service, first, last) of the candidate's alarm events inside (or outside) incident windows."""
    from engine.tracking.assessment import assess

    level = prepared.spec.spec.evaluation.level
    series = assess(result.detector, prepared.test, prepared.test_incidents, level=level).series
    found = []
    for s in series:
        for first, last in alarm_events(s.ts.astype("datetime64[us]").astype(np.int64), s.alarms):
            a, b = s.ts[first], s.ts[last]
            if any(a <= e and b >= st for st, e in s.windows) == inside_incident:
                found.append((s.name, a, b))
    return found


def _py(ts: np.datetime64) -> object:
    return ts.astype("datetime64[us]").item()


def test_rejections_and_false_alarms_in_the_store_count_against_a_candidate(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", days=3)
    loaded = load_spec(write_spec(tmp_path / "spec.yaml", small_spec(detectors=[{"class": "HBOS"}])))
    config = loaded.spec.configs()[0]
    before = prepare(loaded, home.telemetry_db)
    assert before.dataset.negatives.is_empty()
    plain = evaluate_config(config, before)
    assert plain.ok, plain.error
    assert plain.metrics["operator_false_alarms"] == 0.0
    outside = _events(plain, before, inside_incident=False)
    inside = _events(plain, before, inside_incident=True)
    if not outside or not inside:
        pytest.skip("the candidate needs alarms both inside and outside incidents on this data")

    # an operator marked one alarm outside every incident false; a person rejected the action
    # taken on one inside an incident (windows as the journal records them: the event's input)
    (svc_f, a_f, b_f), (svc_r, a_r, b_r) = outside[0], inside[0]
    minute = np.timedelta64(1, "m")
    labels = pl.DataFrame(
        [{"event_id": "evt-1", "service": svc_f, "label": "false_alarm", "actor": "ops",
          "window_start": _py(a_f - minute), "window_end": _py(b_f)},
         {"event_id": "evt-2", "service": svc_f, "label": "true_alarm", "actor": "ops",  # not negative
          "window_start": _py(a_r - minute), "window_end": _py(b_r)}],
        schema=LABELS_SCHEMA,
    )  # fmt: skip
    outcomes = pl.DataFrame(
        [{"decision_id": "dec-1", "service": svc_r, "outcome": "rejected", "action": "rollback_model",
          "window_start": _py(a_r - minute), "window_end": _py(b_r)},
         {"decision_id": "dec-2", "service": svc_f, "outcome": "healed", "action": "restart",
          "window_start": _py(a_f - 10 * minute), "window_end": _py(b_f)}],
        schema=OUTCOMES_SCHEMA,
    )  # fmt: skip
    with TelemetryStore(home.telemetry_db) as store:
        store.upsert_outcomes(outcomes, labels)

    after = prepare(loaded, home.telemetry_db)
    negatives = after.dataset.negatives
    assert sorted(negatives["why"].to_list()) == ["false alarm", "rejected"]
    assert after.dataset.fingerprint != before.dataset.fingerprint  # the operators' word is data
    charged = evaluate_config(config, after)
    m, p = charged.metrics, plain.metrics
    assert m["operator_false_alarms"] == 2.0
    # the rejected one was inside an incident: now a false alarm, the outside one already was
    assert m["precision"] < p["precision"] and m["false_alarms_per_day"] > p["false_alarms_per_day"]
    assert m["recall"] == p["recall"] and m["n_alarm_events"] == p["n_alarm_events"]
    true_before = round(p["precision"] * p["n_alarm_events"])
    assert round(m["precision"] * m["n_alarm_events"]) == true_before - 1
    assert charged.per_series[svc_f]["operator_false_alarms"] >= 1.0

    # labels older than the data's range are not the sweep's business
    with TelemetryStore(home.telemetry_db) as store:
        old = outcomes.with_columns(
            pl.lit("dec-3").alias("decision_id"),
            (pl.col("window_start") - timedelta(days=30)),
            (pl.col("window_end") - timedelta(days=30)),
        ).head(1)
        store.upsert_outcomes(old, labels.clear())
    assert prepare(loaded, home.telemetry_db).dataset.negatives.height == 2
