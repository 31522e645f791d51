"""The journal's commit on the way from an anomaly to its action, SQLite against PostgreSQL.

What is timed is what the engine's writer commits before it dispatches a new decision's action
(``engine.runtime.writer``): one transaction that journals the anomaly event, takes the decision
lock (replicas decide one at a time), reads the safeguards' counts and the active decisions
(``decision_context``), records the decision and inserts its execution under its idempotency
key. SQLite is a local file in WAL mode with ``synchronous=FULL``; PostgreSQL a local server
(127.0.0.1, TCP) with ``fsync`` and synchronous commit on, so both commits are durable. The ratio
is the cost of a journal replicas can share (a remote server adds its network round trips,
several per commit, on top). The last row is the decision lock's cost, one engine alone (a
round trip); with replicas deciding at once, each also waits for the others' commits.

``bench_decided_commit`` times the decider's own commit (``Decider.commit``) of a tick in which
16 events decided, against a tick of one: what each decision of a burst adds to the wait of
every action of its tick. ``bench_grown_commit`` times the same commit on a journal that already
holds 24,000 decisions, with the engine's ids (``engine.records.new_id``: the time, then random
bits) against the random ids of the build before, in the same run.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_rules import _deciding_policies, _engine_events
from harness import Row
from test_journal import _decision

import engine.policy.host
import engine.records
import engine.runtime.decider
import engine.runtime.journal
from engine.ids import hex_id
from engine.policy import PolicyHost
from engine.runtime.decider import Decider
from engine.runtime.events import TickEvents
from engine.runtime.journal import DecisionStatus, Journal
from engine.runtime.policies import ask
from engine.runtime.safeguards import GlobalLimits
from engine.testing.services import PostgresServer

COMMITS = 400
DECIDED_TICKS = 150
GROWN_TICKS = 1500  # decided ticks of 16 committed before the clock starts: 24,000 decisions


def _commits(location: str | Path, n: int, *, lock: bool = True) -> list[float]:
    """Milliseconds per commit of ``n`` decisions, one transaction each (``lock``: with the
    decision lock, as the writer commits; without: what the lock costs, one engine alone)."""
    out = []
    with Journal(location) as journal:
        for i in range(n):
            decision = _decision(i, service=f"svc-{i % 20}", rule=f"r{i % 7}").to_record()
            event = {"id": decision["event_id"], "service": decision["service"], "score": 0.9}
            started = time.perf_counter()
            with journal.transaction():
                journal.record_events([(event, "anomaly")], ts=time.time())
                if lock:
                    journal.lock_decisions()
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
    p50s: dict[str, list[float]] = {"sqlite": [], "postgres": [], "unlocked": []}
    p99s: dict[str, list[float]] = {"sqlite": [], "postgres": [], "unlocked": []}
    with server, tempfile.TemporaryDirectory(prefix="selfheal-bench-journal-") as tmp:
        for i in range(repeats):  # rotate which goes first: the machine's load drifts
            order = [("sqlite", Path(tmp) / f"j{i}.sqlite"), ("postgres", server.database()),
                     ("unlocked", server.database())]  # fmt: skip
            for name, location in order[i % 3 :] + order[: i % 3]:
                ms = _commits(location, COMMITS, lock=name != "unlocked")
                p50s[name].append(float(np.percentile(ms, 50)))
                p99s[name].append(float(np.percentile(ms, 99)))
    note = f"{COMMITS} commits a sample: event, decision lock, safeguard counts, decision, execution; durable"
    return [
        Row("journal commit before dispatch p50, PostgreSQL", "ms", p50s["postgres"], "SQLite (WAL, FULL)",
            p50s["sqlite"], higher_is_better=False, note=note),
        Row("journal commit before dispatch p99, PostgreSQL", "ms", p99s["postgres"], "SQLite (WAL, FULL)",
            p99s["sqlite"], higher_is_better=False),
        Row("journal commit p50, PostgreSQL with the decision lock", "ms", p50s["postgres"],
            "without the lock", p50s["unlocked"], higher_is_better=False),
    ]  # fmt: skip


def _decided_commits(per_tick: int, ticks: int = DECIDED_TICKS, *, grown: int = 0) -> list[float]:
    """Milliseconds per ``Decider.commit`` of a tick whose events each decided (SQLite, durable):
    the engine's own commit (events, safeguard counts, decisions, executions) of what the engine
    benchmark's rule decides, the policies run before the clock starts. Between ticks the actions
    are settled and verified, so every decision of the next tick acts again. The first ``grown``
    ticks only fill the journal: they are not timed."""
    out = []
    ticks += grown
    events = _engine_events(per_tick * ticks)
    host = PolicyHost(_deciding_policies(), tick_seconds=15.0)
    with (
        tempfile.TemporaryDirectory(prefix="selfheal-bench-decided-") as tmp,
        Journal(Path(tmp) / "j") as journal,
    ):
        decider = Decider(journal, limits=GlobalLimits(max_actions_per_hour=10**9, max_concurrent=10**6))
        for k in range(ticks):
            batch = events[k * per_tick : (k + 1) * per_tick]
            tick = ask(host, TickEvents([], batch, time.perf_counter()))
            started = time.perf_counter()
            done = decider.commit([tick])
            if k >= grown:
                out.append((time.perf_counter() - started) * 1000)
            if len(done.executions) != len(batch):
                raise RuntimeError(f"{len(batch)} events decided {len(done.executions)} actions")
            with journal.transaction():
                journal.settle_executions([e.id for e in done.executions])
                journal.set_decision_statuses(
                    [(e.decision.id, DecisionStatus.VERIFIED, None) for e in done.executions]
                )
    return out


def bench_decided_commit(repeats: int) -> list[Row]:
    """A burst of decisions in one tick against one decision a tick: what a decision adds to the
    commit every one of its tick's actions waits for."""
    many: list[float] = []
    one: list[float] = []
    for _ in range(repeats):
        many.append(float(np.percentile(_decided_commits(16), 50)))
        one.append(float(np.percentile(_decided_commits(1), 50)))
    return [
        Row("decider commit p50, a tick of 16 decisions", "ms", many, "a tick of 1 decision", one,
            higher_is_better=False, note=f"{DECIDED_TICKS} ticks a sample; SQLite WAL, synchronous=FULL"),
    ]  # fmt: skip


@contextlib.contextmanager
def _random_ids() -> Iterator[None]:
    """The ids of the build before ``new_id`` put the time first: a prefix and 64 random bits."""

    def random_id(prefix: str) -> str:
        return f"{prefix}-{hex_id(64)}"

    modules = [engine.records, engine.runtime.journal, engine.runtime.decider, engine.policy.host]
    saved = [m.new_id for m in modules]
    for m in modules:
        m.new_id = random_id  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for m, made in zip(modules, saved, strict=True):
            m.new_id = made  # type: ignore[attr-defined]


def bench_grown_commit(repeats: int) -> list[Row]:
    """A decided tick's commit on a journal of 24,000 decisions: this build's ids (time first)
    against random ones, alternating which goes first (the machine's load drifts)."""
    ordered: list[float] = []
    random: list[float] = []
    for i in range(repeats):
        for name in ("ordered", "random")[:: 1 if i % 2 == 0 else -1]:
            with _random_ids() if name == "random" else contextlib.nullcontext():
                ms = _decided_commits(16, grown=GROWN_TICKS)
            (ordered if name == "ordered" else random).append(float(np.percentile(ms, 50)))
    return [
        Row("decider commit p50, 16 decisions, journal of 24,000", "ms", ordered,
            "random ids (the build before)", random, higher_is_better=False,
            note=f"{GROWN_TICKS} ticks of 16 committed first; {DECIDED_TICKS} timed"),
    ]  # fmt: skip


BENCHMARKS = [bench_journal, bench_decided_commit, bench_grown_commit]
