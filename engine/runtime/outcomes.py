"""The journal as evidence for research: what each decision led to, and alarms people labeled.

The engine's journal knows what the detectors' scores were worth in production: which actions were
verified, which failed their verification, which approvals people rejected or let expire, and
which anomalies an operator marked as false alarms. ``selfheal journal export --to-store`` turns
that into two tables of the DuckDB store, beside the telemetry the detectors were trained on:

* ``outcomes``: one row per decision (policy, rule, action, target, risk), its ``outcome`` (see
  ``OUTCOMES``), the approval and verification, the time from the anomaly to the verified
  recovery, and the detector and bundle versions that raised it, with the event's window, so a
  row joins the telemetry that triggered it (the store's ``outcome_telemetry`` view);
* ``alarm_labels``: one row per anomaly event an operator labeled (``false_alarm`` or
  ``true_alarm``), with who, why, and the detector version.

Why labels live in the journal's ``control`` table (key ``label:EVENT``): like the kill switch and
the autonomy modes, a label is an operator's word with an actor and a reason, written through the
engine (the journal has one writer) and kept with its history. The export is idempotent (a row is
replaced by its id), so a team exports on a schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from engine.errors import InputError
from engine.home import Home
from engine.runtime.journal import ApprovalStatus, DecisionStatus, Journal
from engine.runtime.journal_db import is_url

LABEL_PREFIX = "label:"
LABELS = ("false_alarm", "true_alarm")

OUTCOMES = {
    "healed": "the action ran and its verification saw the service healthy again",
    "not_healed": "the action ran; verification failed (and a rollback may have run)",
    "action_failed": "the action itself failed",
    "rejected": "a person rejected the approval",
    "expired": "nobody answered the approval in time",
    "blocked": "a safeguard refused it (cooldown, hourly limit, kill switch...)",
    "observed": "its policy was in observe mode: journaled, not run",
    "open": "not settled yet (awaiting approval, executing, verifying) or lost in a crash",
}
"""Every value of ``outcomes.outcome`` and what it means (the notebook's legend)."""

_NOT_HEALED = {DecisionStatus.VERIFICATION_FAILED, DecisionStatus.ROLLED_BACK}


def label_event(
    journal: Journal, event_id: str, label: str, *, actor: str, reason: str | None
) -> dict[str, Any]:
    """Record an operator's label of one anomaly event (``false_alarm`` or ``true_alarm``).

    Raises ``LookupError`` for an unknown event and ``ValueError`` for an unknown label: the API
    turns them into 404 and 422 with the fix.
    """
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; use one of {', '.join(LABELS)}")
    if journal.event(event_id) is None:
        raise LookupError(
            f"no event {event_id!r} in the journal; list them with `selfheal journal --kind events`"
        )
    journal.set_control(LABEL_PREFIX + event_id, label, actor=actor, reason=reason)
    return {"event_id": event_id, "label": label, "actor": actor, "reason": reason}


def outcome_of(decision: Mapping[str, Any]) -> str:
    """The decision's outcome (a key of ``OUTCOMES``) from its status and its approval's."""
    status = decision["status"]
    if status == DecisionStatus.VERIFIED:
        return "healed"
    if status in _NOT_HEALED:
        return "not_healed"
    if status == DecisionStatus.FAILED:
        return "action_failed"
    if status == DecisionStatus.DENIED:
        return "expired" if decision.get("approval") == ApprovalStatus.EXPIRED else "rejected"
    if status in (DecisionStatus.BLOCKED, DecisionStatus.OBSERVED):
        return str(status)
    return "open"


def _time(ts: float | None) -> datetime | None:
    """Journal epoch seconds as the store's naive UTC timestamps."""
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC).replace(tzinfo=None)


def outcomes_frame(journal: Journal) -> pl.DataFrame:
    """One row per decision of ``journal``, shaped as the store's ``outcomes`` table."""
    rows = []
    for d in journal.outcome_rows():
        verified = d["verified_ts"] if d["status"] == DecisionStatus.VERIFIED else None
        start = d["event_ts"] if d["event_ts"] is not None else d["ts"]
        rows.append(
            {
                "decision_id": d["id"],
                "event_id": d["event_id"],
                "decided": _time(d["ts"]),
                "service": d["service"],
                "target": d["target"],
                "policy": d["policy"],
                "policy_version": d["policy_version"],
                "rule": d["rule"],
                "action": d["action"],
                "risk": d["risk"],
                "status": d["status"],
                "outcome": outcome_of(d),
                "approval": d["approval"],
                "approver": d["approver"],
                "verification": d["verification"],
                "time_to_recover_s": None if verified is None else float(verified - start),
                "event_score": d["event_score"],
                "detector": d["detector"],
                "detector_version": d["detector_version"],
                "bundle_version": d["bundle_version"],
                "window_start": _time(d["window_start"]),
                "window_end": _time(d["window_end"]),
                "journal": str(journal.path),
            }
        )
    return pl.DataFrame(rows, schema=OUTCOMES_SCHEMA)


def labels_frame(journal: Journal) -> pl.DataFrame:
    """One row per labeled anomaly event, shaped as the store's ``alarm_labels`` table."""
    rows = [
        {
            "event_id": r["id"],
            "ts": _time(r["ts"]),
            "service": r["service"],
            "detector": r["detector"],
            "detector_version": r["detector_version"],
            "bundle_version": r["bundle_version"],
            "score": r["score"],
            "label": r["label"],
            "actor": r["actor"],
            "reason": r["reason"],
            "labeled": _time(r["labeled_ts"]),
            "window_start": _time(r["window_start"]),
            "window_end": _time(r["window_end"]),
            "journal": str(journal.path),
        }
        for r in journal.labeled_events(LABEL_PREFIX)
    ]
    return pl.DataFrame(rows, schema=LABELS_SCHEMA)


_TS = pl.Datetime("us")
OUTCOMES_SCHEMA: dict[str, pl.DataType] = {
    "decision_id": pl.String(),
    "event_id": pl.String(),
    "decided": _TS,
    "service": pl.String(),
    "target": pl.String(),
    "policy": pl.String(),
    "policy_version": pl.String(),
    "rule": pl.String(),
    "action": pl.String(),
    "risk": pl.String(),
    "status": pl.String(),
    "outcome": pl.String(),
    "approval": pl.String(),
    "approver": pl.String(),
    "verification": pl.String(),
    "time_to_recover_s": pl.Float64(),
    "event_score": pl.Float64(),
    "detector": pl.String(),
    "detector_version": pl.String(),
    "bundle_version": pl.String(),
    "window_start": _TS,
    "window_end": _TS,
    "journal": pl.String(),
}
LABELS_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "ts": _TS,
    "service": pl.String(),
    "detector": pl.String(),
    "detector_version": pl.String(),
    "bundle_version": pl.String(),
    "score": pl.Float64(),
    "label": pl.String(),
    "actor": pl.String(),
    "reason": pl.String(),
    "labeled": _TS,
    "window_start": _TS,
    "window_end": _TS,
    "journal": pl.String(),
}


def export_to_store(journal_path: Path | str, store_path: Path) -> tuple[int, int]:
    """Write the journal's outcomes and labels into the DuckDB store; return (outcomes, labels).

    The journal is opened read-only (the engine may be running); the store is written in one
    transaction, replacing rows by id, so exporting again updates decisions that settled since.
    """
    from engine.telemetry.store import TelemetryStore

    if not is_url(journal_path) and not Path(journal_path).is_file():
        raise InputError(
            f"{journal_path}: no journal here",
            hint="pass --journal (the engine's journal_path) or run the engine once",
        )
    with Journal(journal_path, read_only=True) as journal:
        outcomes, labels = outcomes_frame(journal), labels_frame(journal)
    with TelemetryStore(store_path) as store, store.transaction():
        store.upsert_outcomes(outcomes, labels)
    return outcomes.height, labels.height


def load_outcomes(
    home: str | Path | Home | None = None, *, policies: list[str] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(outcomes, alarm_labels) from the home's store, optionally of some policies only (labels
    are per detector, kept whole). The store is opened read-only and closed on return."""
    from engine.telemetry.store import TelemetryStore

    home = home if isinstance(home, Home) else Home.resolve(home)
    with TelemetryStore(home.telemetry_db, read_only=True) as store:
        tables = {r[0] for r in store.query("SELECT table_name FROM information_schema.tables").rows()}
        if "outcomes" not in tables:
            raise InputError(
                f"{home.telemetry_db} holds no outcomes yet",
                hint="export the engine's journal first: selfheal journal export --to-store",
            )
        outcomes, labels = store.outcomes()
    if policies is not None:
        outcomes = outcomes.filter(pl.col("policy").is_in(policies))
    return outcomes, labels


def policy_effectiveness(outcomes: pl.DataFrame) -> pl.DataFrame:
    """Per policy and rule: decisions, actions run, verified rate of those, median time to recover,
    rejections and expiries (the table notebook 04 shows)."""
    ran = pl.col("outcome").is_in(["healed", "not_healed", "action_failed"])
    return (
        outcomes.group_by("policy", "rule")
        .agg(
            pl.len().alias("decisions"),
            ran.sum().alias("actions"),
            (pl.col("outcome") == "healed").sum().alias("healed"),
            pl.col("time_to_recover_s").median().alias("median_ttr_s"),
            (pl.col("outcome") == "rejected").sum().alias("rejected"),
            (pl.col("outcome") == "expired").sum().alias("expired"),
            (pl.col("outcome") == "blocked").sum().alias("blocked"),
        )
        .with_columns(
            pl.when(pl.col("actions") > 0).then(pl.col("healed") / pl.col("actions")).alias("verified_rate")
        )
        .sort("policy", "rule")
    )


def false_alarms_by_detector(labels: pl.DataFrame) -> pl.DataFrame:
    """Per detector version: labeled alarms, false alarms and their share."""
    return (
        labels.group_by("detector", "detector_version")
        .agg(pl.len().alias("labeled"), (pl.col("label") == "false_alarm").sum().alias("false_alarms"))
        .with_columns((pl.col("false_alarms") / pl.col("labeled")).alias("false_share"))
        .sort("detector", "detector_version")
    )


def plot_effectiveness(table: pl.DataFrame) -> Any:
    """Bars per policy rule: healed, not healed (actions minus healed), rejected, expired."""
    from engine.tracking.plots import _pyplot

    plt = _pyplot()
    names = [f"{p}/{r}" for p, r in zip(table["policy"], table["rule"], strict=True)]
    fig, ax = plt.subplots(figsize=(10, 0.5 * max(len(names), 2) + 1.2))
    left = [0] * len(names)
    parts = {
        "healed": table["healed"].to_list(),
        "not healed": (table["actions"] - table["healed"]).to_list(),
        "rejected": table["rejected"].to_list(),
        "expired": table["expired"].to_list(),
    }
    for label, values in parts.items():
        ax.barh(names, values, left=left, label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlabel("decisions")
    ax.legend(loc="lower right")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
