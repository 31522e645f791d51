"""The engine's journal: every event, decision, approval, execution and verification, on disk.

Why SQLite in WAL mode with ``synchronous=FULL``: a committed row survives ``kill -9`` and power
loss, and WAL lets ``selfheal journal`` (another process, another connection) read while the engine
writes. The journal is also the engine's memory: safeguards count executions in it, approvals wait
in it, and a restarted engine rebuilds its state from it (see ``engine.runtime.recovery``).

Rows carry the versions that caused them (bundle, detector, policy) and the input window (epoch
seconds, UTC) so that any action can be traced back to the telemetry behind it.

One ``Journal`` object is shared by the engine's threads; a lock serialises its one connection
(SQLite allows one writer anyway). Timestamps are float epoch seconds (UTC). Replicas share a
PostgreSQL journal instead (``journal: postgresql://...``; ``engine.runtime.journal_db``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import RuntimeEngineError
from engine.records import new_id
from engine.runtime.journal_db import Migration, is_url, open_database, redacted

log = logging.getLogger(__name__)

_ACTIVE_KEYS = (  # a subquery: one JSON array of [target, rule, action]
    "SELECT json_group_array(json_array(target, rule, action)) FROM decisions INDEXED BY decisions_active"
    " WHERE status IN ('awaiting_approval', 'ready', 'executing', 'verifying')"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, service TEXT NOT NULL,
    detector TEXT, detector_version TEXT, bundle_version TEXT,
    score REAL, threshold REAL, contributing TEXT, window_start REAL, window_end REAL, payload TEXT
);
CREATE INDEX IF NOT EXISTS events_service_ts ON events (service, ts);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, updated_ts REAL NOT NULL, event_id TEXT,
    service TEXT NOT NULL, target TEXT NOT NULL, policy TEXT, policy_version TEXT, rule TEXT,
    action TEXT NOT NULL, params TEXT NOT NULL, risk TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    bundle_version TEXT, detector TEXT, detector_version TEXT, window_start REAL, window_end REAL,
    spec TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_target_ts ON decisions (target, ts);
CREATE INDEX IF NOT EXISTS decisions_status ON decisions (status);
CREATE INDEX IF NOT EXISTS decisions_active ON decisions (target, rule, action)
    WHERE status IN ('awaiting_approval', 'ready', 'executing', 'verifying');
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, decision_id TEXT NOT NULL UNIQUE, created_ts REAL NOT NULL,
    expires_ts REAL NOT NULL, status TEXT NOT NULL, approver TEXT, reason TEXT, decided_ts REAL,
    allowed_approvers TEXT
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY, decision_id TEXT NOT NULL, idempotency_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL, action TEXT NOT NULL, service TEXT NOT NULL, target TEXT NOT NULL,
    params TEXT NOT NULL, replicas INTEGER NOT NULL DEFAULT 1, status TEXT NOT NULL,
    started_ts REAL NOT NULL, finished_ts REAL, settled_ts REAL, result TEXT, error TEXT
);
CREATE INDEX IF NOT EXISTS executions_target_ts ON executions (target, started_ts);
CREATE INDEX IF NOT EXISTS executions_ts ON executions (started_ts);
CREATE INDEX IF NOT EXISTS executions_kind_ts ON executions (kind, started_ts);
CREATE INDEX IF NOT EXISTS executions_target_kind_ts ON executions (target, kind, started_ts);
CREATE INDEX IF NOT EXISTS executions_decision ON executions (decision_id);
CREATE INDEX IF NOT EXISTS executions_in_flight ON executions (target) WHERE settled_ts IS NULL;
CREATE TABLE IF NOT EXISTS verifications (
    id TEXT PRIMARY KEY, decision_id TEXT NOT NULL, execution_id TEXT NOT NULL UNIQUE,
    started_ts REAL NOT NULL, deadline_ts REAL NOT NULL, status TEXT NOT NULL, detail TEXT,
    finished_ts REAL
);
CREATE INDEX IF NOT EXISTS verifications_status ON verifications (status);
CREATE TABLE IF NOT EXISTS control (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, actor TEXT, reason TEXT, updated_ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS control_history (
    ts REAL NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, actor TEXT, reason TEXT
);
CREATE INDEX IF NOT EXISTS control_history_ts ON control_history (ts);
CREATE TABLE IF NOT EXISTS notifications (
    id TEXT PRIMARY KEY, ts REAL NOT NULL, channel TEXT NOT NULL, kind TEXT NOT NULL,
    decision_id TEXT, status TEXT NOT NULL, attempts INTEGER NOT NULL, error TEXT, body TEXT
);
CREATE INDEX IF NOT EXISTS notifications_ts ON notifications (ts);
"""
# What replicas sharing a PostgreSQL journal keep beside it: the partition leases and members
# (engine.runtime.leases) and the per-series detector states (engine.runtime.states). Until
# version 2 they were created by their modules; IF NOT EXISTS keeps such a database's rows.
_SHARED = """
CREATE TABLE IF NOT EXISTS bus_leases (
    stream TEXT NOT NULL, part INTEGER NOT NULL, owner TEXT NOT NULL DEFAULT '',
    epoch BIGINT NOT NULL DEFAULT 0, expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (stream, part)
);
CREATE TABLE IF NOT EXISTS bus_members (
    stream TEXT NOT NULL, owner TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (stream, owner)
);
CREATE TABLE IF NOT EXISTS detector_states (
    detector TEXT NOT NULL, series TEXT NOT NULL, state BYTEA NOT NULL, PRIMARY KEY (detector, series)
);
"""
# Applied in order, once (engine.runtime.journal_db). A table, column or index the journal needs
# is a new migration appended here: a journal at version 1 never runs version 1 again.
MIGRATIONS = [Migration(1, _SCHEMA), Migration(2, _SHARED, shared=True)]

KINDS = ("events", "decisions", "approvals", "executions", "verifications", "control", "notifications")
_TS_COLUMN = {
    "control": "ts",
    "notifications": "ts",
    "events": "ts",
    "decisions": "ts",
    "approvals": "created_ts",
    "executions": "started_ts",
    "verifications": "started_ts",
}
_TABLE = {"control": "control_history"}  # a kind's rows; other kinds are their table's name
_JSON_COLUMNS = {
    *("value", "contributing", "payload", "params", "spec", "result", "detail", "allowed_approvers", "body"),
}


def migrate(location: Path | str) -> None:
    """Bring the journal's database at ``location`` to this engine's schema, as opening a writer
    does: what shares its database (leases, detector states) calls this before using its tables,
    whichever process starts first."""
    open_database(location, MIGRATIONS, read_only=False, exclusive=False).close()


class DecisionStatus:
    """Where a decision is in its life. Terminal states end with the verification or a refusal."""

    BLOCKED = "blocked"  # a safeguard refused it (reason says which)
    AWAITING_APPROVAL = "awaiting_approval"
    DENIED = "denied"  # rejected or expired approval
    READY = "ready"  # cleared safeguards (and approval); about to be executed
    EXECUTING = "executing"
    VERIFYING = "verifying"
    VERIFIED = "verified"
    FAILED = "failed"  # the action itself failed
    VERIFICATION_FAILED = "verification_failed"
    ROLLED_BACK = "rolled_back"
    UNKNOWN = "unknown"  # the engine died mid-call; reported, never repeated
    STALE = "stale"  # decided before a crash and too old to act on; reported
    OBSERVED = "observed"  # its policy is in observe mode: journaled as what would have run

    ACTIVE = (READY, EXECUTING, VERIFYING)


class ExecutionStatus:
    STARTED = "started"  # committed before the call: a crash leaves this behind
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"  # found 'started' after a crash

    IN_FLIGHT = (STARTED,)


class ApprovalStatus:
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


@dataclass(frozen=True)
class TargetCounts:
    """What the safeguards need to know about one target, read in one go."""

    last_execution_ts: float | None
    executions_last_hour: int
    in_flight_replicas: int
    global_executions_last_hour: int
    global_in_flight: int
    recent_failures: int
    rule_in_flight: int = 0  # executions of the same policy rule (any target) still in flight


@dataclass
class SafeguardCounts:
    """``TargetCounts`` for a batch of decisions, read once and kept current as the batch starts
    executions (``started``), so that two decisions of one batch never both see the last free slot."""

    per_target: dict[str, tuple[float | None, int, int]]  # last start, starts in the hour, replicas in flight
    per_rule: dict[str, int]  # executions in flight per rule
    global_last_hour: int
    global_in_flight: int
    recent_failures: int

    def for_target(self, target: str, rule: str | None) -> TargetCounts:
        last, hour, replicas = self.per_target.get(target, (None, 0, 0))
        return TargetCounts(
            last,
            hour,
            replicas,
            self.global_last_hour,
            self.global_in_flight,
            self.recent_failures,
            self.per_rule.get(rule, 0) if rule is not None else 0,
        )

    def started(self, target: str, rule: str | None, replicas: int, now: float) -> None:
        """Count an execution this batch just started."""
        _, hour, in_flight = self.per_target.get(target, (None, 0, 0))
        self.per_target[target] = (now, hour + 1, in_flight + replicas)
        if rule is not None:
            self.per_rule[rule] = self.per_rule.get(rule, 0) + 1
        self.global_last_hour += 1
        self.global_in_flight += 1


class Journal:
    """The engine's durable record. Thread-safe; open one per process and ``close()`` it.

    It opens a SQLite file or a PostgreSQL URL (``engine.runtime.journal_db``: the statements
    here are SQLite's, translated there). ``path`` is where it is as it may be shown (logs,
    errors, exported rows): the file, or the URL without its password; ``reader()`` opens it
    again read-only. ``exclusive`` (writers only) takes the one-writer lock: a second engine would
    recover (and so rewrite) the live one's in-flight executions and approvals.
    """

    def __init__(self, path: Path | str, *, read_only: bool = False, exclusive: bool = True) -> None:
        self._location = path
        self.path: Path | str = redacted(str(path)) if is_url(path) else Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        self._db = open_database(path, MIGRATIONS, read_only=read_only, exclusive=exclusive)
        self._in_tx = False

    def reader(self) -> Journal:
        """Another connection to this journal, read-only (a reader never waits on this one's lock)."""
        return Journal(self._location, read_only=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- transactions
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one commit (one fsync). Nested calls join the outer transaction."""
        with self._lock:
            if self._in_tx:
                yield
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._in_tx = True
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._in_tx = False

    def lock_decisions(self) -> None:
        """Inside ``transaction()``, before reading safeguard counts: until this transaction ends, no
        other engine sharing the journal decides (``engine.runtime.journal_db``), so the counts read
        next stay true until this transaction's executions are committed."""
        with self._lock:
            if not self._in_tx:
                raise RuntimeEngineError("lock_decisions() outside a transaction would hold nothing")
            self._db.lock_decisions()

    def _write(self, sql: str, params: Sequence[Any]) -> int:
        with self._lock:
            if self.read_only:
                raise RuntimeEngineError(f"{self.path}: journal opened read-only")
            return self._db.execute(sql, params).rowcount

    def _update_many(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        sets: str,
        extra: Sequence[Any] = (),
    ) -> None:
        """One UPDATE for many rows keyed by ``id``: each row is ``(id, *columns)``, visible to
        ``sets`` as ``v.<column>``; ``extra`` binds the ``?`` in ``sets``.

        Why: every statement hands the GIL over (SQLite runs without it), and under load each
        hand-over costs the deciding thread up to a switch interval; one statement per kind of
        write keeps a busy batch's commit about as short as a quiet one's.
        """
        names = ", ".join(("id", *columns))
        row_marks = "(" + ",".join("?" * (1 + len(columns))) + ")"
        for start in range(0, len(rows), _ROWS_PER_STATEMENT):
            chunk = rows[start : start + _ROWS_PER_STATEMENT]
            self._write(
                f"WITH v({names}) AS (VALUES {','.join([row_marks] * len(chunk))}) "
                f"UPDATE {table} SET {sets} FROM v WHERE {table}.id = v.id",
                [*(x for row in chunk for x in row), *extra],
            )

    def _insert_many(self, insert: str, row_marks: str, rows: Sequence[Sequence[Any]]) -> int:
        """``insert`` (``INSERT ... VALUES``) for many rows, ``_ROWS_PER_STATEMENT`` per statement
        (multi-row VALUES, not executemany, which steps and hands the GIL over once per row; chunks
        keep the bound parameters under SQLite's limit). Returns how many rows were inserted."""
        inserted = 0
        for start in range(0, len(rows), _ROWS_PER_STATEMENT):
            chunk = rows[start : start + _ROWS_PER_STATEMENT]
            values = ",".join([row_marks] * len(chunk))
            inserted += self._write(f"{insert} {values}", [v for row in chunk for v in row])
        return inserted

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [_decode(dict(r)) for r in rows]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    # ---------------------------------------------------------------- events
    def record_event(
        self, event: Mapping[str, Any], *, kind: str = "anomaly", ts: float | None = None
    ) -> str:
        """Journal an anomaly (or health-change) event; returns its id (the event's own, if it has one)."""
        row = _event_row(event, kind, time.time() if ts is None else ts)
        self._insert_many("INSERT OR IGNORE INTO events VALUES", _EVENT_VALUES, [row])
        return str(row[0])

    def record_events(self, events: Sequence[tuple[Mapping[str, Any], str]], *, ts: float) -> None:
        """Journal many ``(event, kind)`` at once: one statement, so the caller's transaction stays short."""
        rows = [_event_row(event, kind, ts) for event, kind in events]
        self._insert_many("INSERT OR IGNORE INTO events VALUES", _EVENT_VALUES, rows)

    def events_since(
        self, since: float, kinds: Sequence[str] = ("anomaly", "health")
    ) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(kinds))
        return self._rows(
            f"SELECT * FROM events WHERE ts >= ? AND kind IN ({marks}) ORDER BY ts, rowid", (since, *kinds)
        )

    def event(self, event_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM events WHERE id = ?", (event_id,))

    def last_health(self) -> dict[str, bool]:
        """The latest known health per service (True = anomalous), from health-change events."""
        rows = self._rows(
            "SELECT service, payload FROM events WHERE kind = 'health' AND rowid IN "
            "(SELECT max(rowid) FROM events WHERE kind = 'health' GROUP BY service)"
        )
        return {r["service"]: bool(r["payload"].get("anomalous")) for r in rows}

    def healthy_again(self, service: str, *, after: float, until: float) -> float | None:
        """When ``service`` was first journaled healthy again in (after, until], if it was."""
        row = self._one(
            "SELECT ts FROM events WHERE service = ? AND kind = 'health' AND ts > ? AND ts <= ? "
            "AND json_extract(payload, '$.anomalous') = 0 ORDER BY ts LIMIT 1",
            (service, after, until),
        )
        return None if row is None else float(row["ts"])

    # ---------------------------------------------------------------- decisions
    def latest_decisions(self) -> dict[str, dict[str, Any]]:
        """Each service's latest decision (the console's services view), in one statement."""
        rows = self._rows(
            "SELECT * FROM decisions WHERE rowid IN (SELECT max(rowid) FROM decisions GROUP BY service)"
        )
        return {r["service"]: r for r in rows}

    def decisions_of(self, policy: str, status: str, *, limit: int) -> list[dict[str, Any]]:
        """A policy's decisions in one status, newest first."""
        return self._rows(
            "SELECT * FROM decisions WHERE policy = ? AND status = ? ORDER BY ts DESC LIMIT ?",
            (policy, status, limit),
        )

    def record_decision(self, decision: Mapping[str, Any], *, status: str, reason: str | None = None) -> str:
        return self.record_decisions([(decision, status, reason)])[0]

    def record_decisions(self, rows: Sequence[tuple[Mapping[str, Any], str, str | None]]) -> list[str]:
        """``(decision, status, reason)`` for many decisions; one statement. Returns their ids."""
        now = time.time()
        ids = [str(decision.get("id") or new_id("dec")) for decision, _, _ in rows]
        values = [
            (
                decision_id,
                now,
                now,
                decision.get("event_id"),
                decision["service"],
                decision.get("target") or decision["service"],
                decision.get("policy"),
                decision.get("policy_version"),
                decision.get("rule"),
                decision["action"],
                _enc(decision.get("params") or {}),
                decision.get("risk", "low"),
                status,
                reason,
                decision.get("bundle_version"),
                decision.get("detector"),
                decision.get("detector_version"),
                decision.get("window_start"),
                decision.get("window_end"),
                _enc(decision.get("spec") or {}),
            )
            for decision_id, (decision, status, reason) in zip(ids, rows, strict=True)
        ]
        self._insert_many("INSERT INTO decisions VALUES", "(" + ",".join("?" * 20) + ")", values)
        return ids

    def set_decision_status(self, decision_id: str, status: str, reason: str | None = None) -> None:
        self.set_decision_statuses([(decision_id, status, reason)])

    def set_decision_statuses(self, rows: Sequence[tuple[str, str, str | None]]) -> None:
        """``(decision_id, status, reason)`` for many decisions; a None reason keeps the old one."""
        self._update_many(
            "decisions",
            ("status", "reason"),
            rows,
            sets="status = v.status, reason = coalesce(v.reason, decisions.reason), updated_ts = ?",
            extra=(time.time(),),
        )

    def decision(self, decision_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM decisions WHERE id = ?", (decision_id,))

    def active_decision(self, target: str, rule: str, action: str) -> dict[str, Any] | None:
        """A decision for the same rule, target and action still waiting, running or being verified."""
        return self._one(
            "SELECT * FROM decisions WHERE target = ? AND rule = ? AND action = ? AND status IN "
            "('awaiting_approval', 'ready', 'executing', 'verifying') LIMIT 1",
            (target, rule, action),
        )

    def decisions_with_status(self, statuses: Sequence[str]) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(statuses))
        return self._rows(f"SELECT * FROM decisions WHERE status IN ({marks}) ORDER BY ts", tuple(statuses))

    # ---------------------------------------------------------------- approvals
    def create_approval(
        self,
        decision_id: str,
        *,
        ttl_s: float,
        allowed_approvers: Sequence[str] = (),
        now: float | None = None,
    ) -> str:
        now = time.time() if now is None else now
        approval_id = new_id("apr")
        self._write(
            "INSERT INTO approvals VALUES (?,?,?,?,?,?,?,?,?)",
            (
                approval_id,
                decision_id,
                now,
                now + ttl_s,
                ApprovalStatus.PENDING,
                None,
                None,
                None,
                _enc(list(allowed_approvers)),
            ),
        )
        return approval_id

    def approval(self, approval_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM approvals WHERE id = ?", (approval_id,))

    def approval_for(self, decision_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM approvals WHERE decision_id = ?", (decision_id,))

    def pending_approvals(self) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT a.*, d.service, d.target, d.action, d.params, d.risk, d.policy, d.rule "
            "FROM approvals a JOIN decisions d ON d.id = a.decision_id "
            "WHERE a.status = 'pending' ORDER BY a.created_ts"
        )

    def settle_approval(
        self,
        approval_id: str,
        status: str,
        *,
        approver: str | None,
        reason: str | None,
        now: float | None = None,
    ) -> bool:
        """Move a pending approval to a final state; False when it was no longer pending (a race lost)."""
        return (
            self._write(
                "UPDATE approvals SET status = ?, approver = ?, reason = ?, decided_ts = ? "
                "WHERE id = ? AND status = 'pending'",
                (status, approver, reason, time.time() if now is None else now, approval_id),
            )
            == 1
        )

    # ---------------------------------------------------------------- executions
    def start_execution(
        self,
        decision: Mapping[str, Any],
        *,
        kind: str,
        action: str,
        params: Mapping[str, Any],
        idempotency_key: str,
        replicas: int = 1,
    ) -> str | None:
        """Record an execution *before* the call. None when the key was already used: do not call."""
        execution_id = new_id("exe")
        inserted = self._insert_executions(
            [(execution_id, decision, kind, action, params, idempotency_key, replicas)]
        )
        return execution_id if inserted else None

    def start_new_executions(self, rows: Sequence[tuple[Mapping[str, Any], str, int]]) -> list[str]:
        """``(decision, idempotency_key, replicas)`` of new decisions' actions, one statement.

        For decisions recorded in this same transaction only: their keys cannot have been used, so
        every row must be inserted (a key that was is a bug, and fails the transaction).
        """
        ids = [new_id("exe") for _ in rows]
        inserted = self._insert_executions(
            [
                (eid, decision, "action", decision["action"], decision.get("params") or {}, key, replicas)
                for eid, (decision, key, replicas) in zip(ids, rows, strict=True)
            ]
        )
        if inserted != len(rows):
            raise RuntimeEngineError(f"{len(rows) - inserted} new execution(s) had a used idempotency key")
        return ids

    def _insert_executions(
        self, rows: Sequence[tuple[str, Mapping[str, Any], str, str, Mapping[str, Any], str, int]]
    ) -> int:
        now = time.time()
        values = [
            (
                execution_id,
                decision["id"],
                key,
                kind,
                action,
                decision["service"],
                decision["target"],
                _enc(dict(call_params)),
                replicas,
                ExecutionStatus.STARTED,
                now,
            )
            for execution_id, decision, kind, action, call_params, key, replicas in rows
        ]
        return self._insert_many(
            "INSERT OR IGNORE INTO executions (id, decision_id, idempotency_key, kind, action, service,"
            " target, params, replicas, status, started_ts) VALUES",
            "(?,?,?,?,?,?,?,?,?,?,?)",
            values,
        )

    def finish_execution(
        self, execution_id: str, status: str, *, result: Any = None, error: str | None = None
    ) -> None:
        self.finish_executions([(execution_id, status, result, error)])

    def finish_executions(self, rows: Sequence[tuple[str, str, Any, str | None]]) -> None:
        """``(execution_id, status, result, error)`` for many executions that returned."""
        self._update_many(
            "executions",
            ("status", "result", "error"),
            [(eid, status, _enc(result), error) for eid, status, result, error in rows],
            sets="status = v.status, result = v.result, error = v.error, finished_ts = ?",
            extra=(time.time(),),
        )

    def settle_execution(self, execution_id: str) -> None:
        """The action's effect is over (verified, failed or rolled back): it no longer counts as in flight."""
        self.settle_executions([execution_id])

    def settle_executions(self, execution_ids: Sequence[str]) -> None:
        self._update_many(
            "executions", (), [(e,) for e in execution_ids], sets="settled_ts = ?", extra=(time.time(),)
        )

    def execution(self, execution_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM executions WHERE id = ?", (execution_id,))

    def executions_for(self, decision_id: str) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT * FROM executions WHERE decision_id = ? ORDER BY started_ts", (decision_id,)
        )

    def incident(self, decision_id: str) -> list[tuple[float, str, dict[str, Any]]]:
        """One decision's story, oldest first, as (ts, kind, row): its events (the one that
        triggered it and those a persistence rule joined), the decision, its approval, its
        executions (action, escalation, rollback), verifications and notifications."""
        decision = self.decision(decision_id)
        if decision is None:
            return []
        ids = [decision.get("event_id") or "", *((decision.get("spec") or {}).get("evidence") or [])]
        marks = ",".join("?" * len(ids))
        out = [(r["ts"], "event", r) for r in self._rows(f"SELECT * FROM events WHERE id IN ({marks})", ids)]
        out.append((decision["ts"], "decision", decision))
        approval = self.approval_for(decision_id)
        if approval is not None:
            out.append((approval["created_ts"], "approval", approval))
        out += [(r["started_ts"], "execution", r) for r in self.executions_for(decision_id)]
        for kind, ts in (("verifications", "started_ts"), ("notifications", "ts")):
            rows = self._rows(f"SELECT * FROM {kind} WHERE decision_id = ?", (decision_id,))
            out += [(r[ts], kind[:-1], r) for r in rows]
        return sorted(out, key=lambda item: item[0])

    def executions_with_status(self, statuses: Sequence[str]) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(statuses))
        return self._rows(f"SELECT * FROM executions WHERE status IN ({marks})", tuple(statuses))

    def target_counts(
        self,
        target: str,
        *,
        now: float,
        rule: str | None = None,
        failure_window_s: float = 3600.0,
        cap: int = 100_000,
    ) -> TargetCounts:
        """Counts behind every safeguard for one target (and its rule), from the journal."""
        rules = [rule] if rule is not None else []
        counts, _ = self.decision_context(
            [target], rules, now=now, failure_window_s=failure_window_s, cap=cap
        )
        return counts.for_target(target, rule)

    def active_decision_keys(self) -> set[tuple[str, str, str]]:
        """(target, rule, action) of every decision waiting, running or being verified."""
        with self._lock:
            (keys,) = self._db.execute(f"SELECT ({_ACTIVE_KEYS})").fetchone()
        return {(t, r, a) for t, r, a in json.loads(keys)}

    def decision_context(
        self,
        targets: Sequence[str],
        rules: Sequence[str],
        *,
        now: float,
        failure_window_s: float = 3600.0,
        cap: int = 100_000,
    ) -> tuple[SafeguardCounts, set[tuple[str, str, str]]]:
        """What the decider checks a batch of decisions against, in one statement and one row: the
        safeguard counts of their targets and rules, and the active (target, rule, action) keys.

        Why one row: SQLite runs without the GIL, and each statement *and each row stepped* hands
        it over; under load each hand-over can cost the deciding thread milliseconds, and so every
        dispatch waits. Per-target and per-rule results come back as JSON arrays. Hourly counts
        stop at ``cap`` (pass the largest limit + 1): a limit only needs to know it is reached, and
        the cost stays bounded however busy the last hour was.
        """
        targets = list(dict.fromkeys(targets))
        rules = list(dict.fromkeys(rules))
        params: dict[str, Any] = {"hour_ago": now - 3600.0, "cap": cap, "since": now - failure_window_s}
        params |= {f"t{i}": t for i, t in enumerate(targets)}
        params |= {f"r{i}": r for i, r in enumerate(rules)}
        per_target = "'[]'"
        if targets:
            values = ",".join(f"(:t{i})" for i in range(len(targets)))
            per_target = (
                f"(WITH t(target) AS (VALUES {values}) SELECT json_group_array(json_array(t.target,"
                " (SELECT max(started_ts) FROM executions WHERE target = t.target AND kind = 'action'),"
                " (SELECT count(*) FROM (SELECT 1 FROM executions WHERE target = t.target"
                "   AND kind = 'action' AND started_ts >= :hour_ago LIMIT :cap)),"
                " (SELECT coalesce(sum(replicas), 0) FROM executions INDEXED BY executions_in_flight"
                "   WHERE target = t.target AND kind = 'action'"
                "   AND settled_ts IS NULL AND status IN ('started', 'succeeded')))) FROM t)"
            )
        per_rule = "'[]'"
        if rules:
            marks = ",".join(f":r{i}" for i in range(len(rules)))
            per_rule = (
                "(SELECT json_group_array(json_array(rule, n)) FROM (SELECT d.rule AS rule, count(*) AS n"
                " FROM executions e INDEXED BY executions_in_flight JOIN decisions d ON d.id = e.decision_id"
                " WHERE e.settled_ts IS NULL AND e.kind = 'action' AND e.status IN ('started', 'succeeded')"
                f" AND d.rule IN ({marks}) GROUP BY d.rule))"
            )
        with self._lock:
            row = self._db.execute(
                f"SELECT {per_target}, {per_rule},"
                " (SELECT count(*) FROM (SELECT 1 FROM executions WHERE kind = 'action'"
                "   AND started_ts >= :hour_ago LIMIT :cap)),"
                " (SELECT count(*) FROM executions INDEXED BY executions_in_flight"
                "   WHERE kind = 'action' AND settled_ts IS NULL AND status IN ('started', 'succeeded')),"
                " (SELECT count(*) FROM decisions WHERE status IN ('failed', 'verification_failed',"
                "   'rolled_back') AND updated_ts >= :since),"
                f" ({_ACTIVE_KEYS})",
                params,
            ).fetchone()
        counts = SafeguardCounts(
            {t: (last, int(hour), int(replicas)) for t, last, hour, replicas in json.loads(row[0])},
            {**dict.fromkeys(rules, 0), **{r: int(n) for r, n in json.loads(row[1])}},
            row[2],
            row[3],
            row[4],
        )
        return counts, {(t, r, a) for t, r, a in json.loads(row[5])}

    # ---------------------------------------------------------------- verifications
    def start_verification(self, decision_id: str, execution_id: str, *, deadline_ts: float) -> str:
        return self.start_verifications([(decision_id, execution_id, time.time(), deadline_ts)])[0]

    def start_verifications(self, rows: Sequence[tuple[str, str, float, float]]) -> list[str]:
        """``(decision_id, execution_id, started_ts, deadline_ts)`` for many; one insert. Returns ids.

        ``started_ts`` is when the action returned: only observations after it verify the action.
        """
        ids = [new_id("ver") for _ in rows]
        values = [(vid, *row) for vid, row in zip(ids, rows, strict=True)]
        self._insert_many(
            "INSERT OR IGNORE INTO verifications VALUES", "(?,?,?,?,?,'watching',NULL,NULL)", values
        )
        return ids

    def finish_verifications(self, rows: Sequence[tuple[str, str, Any]]) -> None:
        """``(verification_id, status, detail)`` for many verdicts."""
        self._update_many(
            "verifications",
            ("status", "detail"),
            [(vid, status, _enc(detail)) for vid, status, detail in rows],
            sets="status = v.status, detail = v.detail, finished_ts = ?",
            extra=(time.time(),),
        )

    def watching_with_decisions(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Every watched verification with its decision's row, in one query (the supervisor's pass)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT v.id AS v_id, v.execution_id AS v_execution_id, v.started_ts AS v_started_ts, "
                "v.deadline_ts AS v_deadline_ts, d.* FROM verifications v "
                "JOIN decisions d ON d.id = v.decision_id WHERE v.status = 'watching' ORDER BY v.deadline_ts"
            ).fetchall()
        out = []
        for r in rows:
            decision = _decode({k: v for k, v in dict(r).items() if not k.startswith("v_")})
            verification = {
                "id": r["v_id"],
                "decision_id": decision["id"],
                "execution_id": r["v_execution_id"],
                "started_ts": r["v_started_ts"],
                "deadline_ts": r["v_deadline_ts"],
            }
            out.append((verification, decision))
        return out

    # ---------------------------------------------------------------- control (kill switch, modes)
    def set_control(self, key: str, value: Any, *, actor: str | None, reason: str | None = None) -> None:
        """Set an operator control (the kill switch, a policy's mode) and keep the change in its
        history (``recent("control")``): who paused, when and why is evidence after an incident,
        and the current row alone would keep only the last word."""
        now, encoded = time.time(), _enc(value)
        with self.transaction():
            self._write(
                "INSERT INTO control VALUES (?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET "
                "value = excluded.value, actor = excluded.actor, reason = excluded.reason, "
                "updated_ts = excluded.updated_ts",
                (key, encoded, actor, reason, now),
            )
            self._write("INSERT INTO control_history VALUES (?,?,?,?,?)", (now, key, encoded, actor, reason))

    def control(self, key: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM control WHERE key = ?", (key,))

    def controls(self, prefix: str) -> list[dict[str, Any]]:
        """The current value of every control whose key starts with ``prefix`` (policy modes)."""
        return self._rows(
            "SELECT * FROM control WHERE substr(key, 1, ?) = ? ORDER BY key", (len(prefix), prefix)
        )

    # ---------------------------------------------------------------- evidence (engine.runtime.outcomes)
    def outcome_rows(self) -> list[dict[str, Any]]:
        """Every decision with its event (time, score), approval and latest verification."""
        return self._rows(
            "SELECT d.*, e.ts AS event_ts, e.score AS event_score, a.status AS approval, "
            "a.approver AS approver, v.status AS verification, v.finished_ts AS verified_ts "
            "FROM decisions d LEFT JOIN events e ON e.id = d.event_id "
            "LEFT JOIN approvals a ON a.decision_id = d.id "
            "LEFT JOIN verifications v ON v.id = (SELECT id FROM verifications w "
            "WHERE w.decision_id = d.id ORDER BY w.started_ts DESC LIMIT 1) ORDER BY d.ts, d.id"
        )

    def labeled_events(self, prefix: str) -> list[dict[str, Any]]:
        """Events an operator labeled (control key ``prefix`` + event id) with the label's word."""
        return [
            {**row, "label": json.loads(row["label"])}
            for row in self._rows(
                "SELECT e.*, c.value AS label, c.actor AS actor, c.reason AS reason, "
                "c.updated_ts AS labeled_ts "
                "FROM control c JOIN events e ON e.id = substr(c.key, ?) "
                "WHERE substr(c.key, 1, ?) = ? ORDER BY e.ts, e.id",
                (len(prefix) + 1, len(prefix), prefix),
            )
        ]

    # ---------------------------------------------------------------- notifications
    def queue_notifications(self, rows: Sequence[tuple[str, str, str | None, Any]]) -> list[str]:
        """``(channel, kind, decision_id, note)`` about to be sent: journaled ``pending`` first (with
        the engine's note as the body), so a message queued when the engine dies is sent after the
        restart instead of lost. Returns their ids (each message's Idempotency-Key)."""
        now = time.time()
        ids = [new_id("ntf") for _ in rows]
        values = [
            (nid, now, channel, kind, decision_id, "pending", 0, None, _enc(note))
            for nid, (channel, kind, decision_id, note) in zip(ids, rows, strict=True)
        ]
        self._insert_many("INSERT INTO notifications VALUES", "(?,?,?,?,?,?,?,?,?)", values)
        return ids

    def settle_notification(
        self, notification_id: str, *, status: str, attempts: int, error: str | None, body: Any
    ) -> None:
        """A queued message's end: ``sent``, or ``dead`` (undeliverable after its retries), with the
        body as sent."""
        self._write(
            "UPDATE notifications SET status = ?, attempts = ?, error = ?, body = ? WHERE id = ?",
            (status, attempts, error, _enc(body), notification_id),
        )

    def pending_notifications(self) -> list[dict[str, Any]]:
        """Messages queued but not settled: the engine stopped (or died) before sending them."""
        return self._rows("SELECT * FROM notifications WHERE status = 'pending' ORDER BY ts, id")

    # ---------------------------------------------------------------- listing
    def recent(
        self,
        kind: str = "decisions",
        *,
        service: str | None = None,
        since: float | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Recent rows of one kind, newest first, filtered (what `selfheal journal` shows)."""
        if kind not in KINDS:
            raise RuntimeEngineError(f"unknown journal kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
        ts = _TS_COLUMN[kind]
        where, params = [], []
        if kind == "control" and service is not None:
            raise RuntimeEngineError(
                "control rows (pause, resume, mode changes) have no service",
                hint="drop --service, or filter by the control's key with --status (e.g. paused)",
            )
        if service is not None:
            if kind in ("approvals", "verifications", "notifications"):
                where.append("decision_id IN (SELECT id FROM decisions WHERE service = ? OR target = ?)")
                params += [service, service]
            elif kind == "events":
                where.append("service = ?")
                params.append(service)
            else:
                where.append("(service = ? OR target = ?)")
                params += [service, service]
        if since is not None:
            where.append(f"{ts} >= ?")
            params.append(since)
        if status is not None:
            if kind == "events":
                where.append("kind = ?")  # events have a kind (anomaly, health), not a status
            elif kind == "control":
                where.append("key = ?")  # which control: paused, mode:POLICY, ...
            else:
                where.append("status = ?")
            params.append(status)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return self._rows(
            f"SELECT * FROM {_TABLE.get(kind, kind)} {clause} ORDER BY {ts} DESC, rowid DESC LIMIT ?",
            (*params, limit),
        )

    def count(self, kind: str, status: str | None = None) -> int:
        if kind not in KINDS:
            raise RuntimeEngineError(f"unknown journal kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
        table, column = _TABLE.get(kind, kind), "key" if kind == "control" else "status"
        with self._lock:
            if status is None:
                return int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            return int(
                self._db.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?", (status,)).fetchone()[0]
            )


_EVENT_VALUES = "(?,?,?,?,?,?,?,?,?,?,?,?,?)"
# Rows per multi-row INSERT/UPDATE: x 20 columns at most stays under SQLite's 32,766 bound parameters.
_ROWS_PER_STATEMENT = 500


def _event_row(event: Mapping[str, Any], kind: str, ts: float) -> tuple[Any, ...]:
    return (
        str(event.get("id") or new_id("evt")),
        ts,
        kind,
        event["service"],
        event.get("detector"),
        event.get("detector_version"),
        event.get("bundle_version"),
        event.get("score"),
        event.get("threshold"),
        _enc(event.get("contributing")),
        event.get("window_start"),
        event.get("window_end"),
        _enc(dict(event)),
    )


_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))
"""One encoder for every JSON column: ``json.dumps`` with options builds a new one each call."""


def _enc(value: Any) -> str | None:
    return None if value is None else _ENCODER.encode(value)


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in _JSON_COLUMNS.intersection(row):
        if isinstance(row[key], str):
            row[key] = json.loads(row[key])
    return row
