"""The journal's commit on the way from an anomaly to its action, SQLite against PostgreSQL.

What is timed is what the engine's writer commits before it dispatches a new decision's action
(``engine.runtime.writer``): one transaction that journals the anomaly event, reads the
safeguards' counts and the active decisions (``decision_context``), records the decision and
inserts its execution under its idempotency key. SQLite is a local file in WAL mode with
``synchronous=FULL``; PostgreSQL a local server (127.0.0.1, TCP) with ``fsync`` and synchronous
commit on, so both commits are durable. The ratio is the cost of a journal replicas can share
(a remote server adds its network round trips, several per commit, on top).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Row
from test_journal import _decision

from engine.runtime.journal import DecisionStatus, Journal
from engine.testing.services import PostgresServer

COMMITS = 400


def _commits(location: str | Path, n: int) -> list[float]:
    """Milliseconds per commit of ``n`` decisions, one transaction each."""
    out = []
    with Journal(location) as journal:
        for i in range(n):
            decision = _decision(i, service=f"svc-{i % 20}", rule=f"r{i % 7}").to_record()
            event = {"id": decision["event_id"], "service": decision["service"], "score": 0.9}
            started = time.perf_counter()
            with journal.transaction():
                journal.record_events([(event, "anomaly")], ts=time.time())
                journal.decision_context([decision["target"]], [decision["rule"]], now=time.time())
                journal.record_decisions([(decision, DecisionStatus.EXECUTING, None)])
                journal.start_new_executions([(decision, f"{decision['id']}:action", 1)])
            out.append((time.perf_counter() - started) * 1000)
    return out


def bench_journal(repeats: int) -> list[Row]:
    server = PostgresServer(durable=True)
    if server.missing():
        print(f"bench_journal: skipped, {server.missing()}", file=sys.stderr)
        return []
    sqlite_p50, sqlite_p99, pg_p50, pg_p99 = [], [], [], []
    with server, tempfile.TemporaryDirectory(prefix="selfheal-bench-journal-") as tmp:
        for i in range(repeats):  # alternate which goes first: the machine's load drifts
            order = [("sqlite", Path(tmp) / f"j{i}.sqlite"), ("postgres", server.database())]
            for name, location in order if i % 2 else reversed(order):
                ms = _commits(location, COMMITS)
                p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
                (sqlite_p50 if name == "sqlite" else pg_p50).append(p50)
                (sqlite_p99 if name == "sqlite" else pg_p99).append(p99)
    note = f"{COMMITS} commits per sample: event, safeguard counts, decision, execution; both durable"
    return [
        Row("journal commit before dispatch p50, PostgreSQL", "ms", pg_p50, "SQLite (WAL, FULL)", sqlite_p50,
            higher_is_better=False, note=note),
        Row("journal commit before dispatch p99, PostgreSQL", "ms", pg_p99, "SQLite (WAL, FULL)", sqlite_p99,
            higher_is_better=False),
    ]  # fmt: skip


BENCHMARKS = [bench_journal]
