"""The engine: points in, scored features, anomaly events, decisions, safeguards, actions, verification.

Threads and why:
- sources (HTTP handlers, file tails, scrapers) only parse and ``offer`` to the bounded queue;
- one scoring thread takes whole batches per tick and pushes them through the online features,
  scoring every closed feature row of the tick in one micro-batch across services (or hands them
  to scoring worker processes, ``workers: N``, services partitioned across them, whose results
  come back on one reader thread per worker); turning scores into anomaly events and health
  changes is serialised (one tick at a time, in order), and so is asking the durable-rules host
  about them (health changes first, so gating sees every root of the tick); the tick, with what
  the policies decided, is queued for
- one deciding thread, the journal's one hot-path writer: in one transaction it journals the
  events, passes each decision through the safeguards (under one lock, so two deciders never both
  see "1 slot left") and records decisions and executions, together with the outcomes of finished
  actuator calls and the verdicts of verifications; one fsync'd commit *before* any actuator is
  called: after a crash a 'started' execution is reported, never repeated, and its idempotency
  key refuses a second attempt;
- a worker pool calls actuators (they do I/O) so a slow target never stalls scoring or deciding;
- a supervisor thread expires approvals, runs approved decisions, watches verifications (their
  verdicts go to the decider to journal) and reads the kill switch from the journal (so
  ``selfheal pause`` works even against a busy engine).

Why this split: SQLite allows one writer anyway, and threads that each committed their own small
transactions queued on the journal lock in front of the decider, which is what an action's
dispatch waits for; asking the policies before the decider lets a tick's durable-rules work overlap
the previous tick's commit. (The benchmark's anomaly-to-dispatch p99 went from ~700 ms to the
figures in the README.)
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ActionError, RuntimeEngineError
from engine.runtime import safeguards
from engine.runtime.attribution import Attribution
from engine.runtime.components import EngineComponents
from engine.runtime.config import EngineSettings
from engine.runtime.journal import (
    ApprovalStatus,
    DecisionStatus,
    ExecutionStatus,
    Journal,
    SafeguardCounts,
    TargetCounts,
    new_id,
)
from engine.runtime.metrics import EngineMetrics
from engine.runtime.model import ActionCall, AnomalyEvent, Decision
from engine.runtime.sources import DeadLetter, IngestQueue
from engine.runtime.verify import steady_state
from engine.telemetry.columns import PointColumns
from engine.telemetry.points import Point, Points, Rejection

log = logging.getLogger(__name__)

PAUSE_KEY = "paused"
MAX_TICK_POINTS = 20_000  # per scoring tick: short ticks keep arrival-to-event latency low
SUPERVISE_SPACING_S = 0.05  # at most ~20 supervision passes per second
ACT_THREADS = 16  # actuator calls at once (more decisions wait in the pool's queue)


class ApprovalRefused(RuntimeEngineError):
    """An approve/reject that cannot apply: unknown id, already settled, expired or not allowed."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class Engine:
    """One running engine. ``start()``, feed it (``ingest``), ``stop()``; or run it with ``serve``."""

    def __init__(
        self,
        components: EngineComponents,
        settings: EngineSettings,
        *,
        journal_path: Path,
        dead_letter_path: Path,
        record_latencies: bool = False,
    ) -> None:
        self.components = components
        self.settings = settings
        self.journal = Journal(journal_path)
        self.queue = IngestQueue(settings.queue_max_points)
        self.dead_letter = DeadLetter(dead_letter_path)
        self.limits = settings.limits.to_global()
        self.maintenance = [m.window() for m in settings.maintenance]
        self._pending_approvals = 0
        self.metrics = EngineMetrics(lambda: self.queue.depth, lambda: self._pending_approvals)
        self.features = components.new_features()
        self.threshold = float(components.pipeline.threshold_)
        self.feature_names = list(components.pipeline.feature_names)
        self._spec_metrics = list(dict.fromkeys(f.split("__", 1)[0] for f in self.feature_names))
        self.paused = False
        self.ready = threading.Event()
        self.latest_score: dict[str, tuple[float, float]] = {}
        self.latest_metric: dict[tuple[str, str], tuple[float, float]] = {}
        self.health: dict[str, bool] = {}
        self._attribution = Attribution(self.feature_names)
        self._settling: dict[str, float] = {}
        self._stop = threading.Event()
        self._decide_stop = threading.Event()
        self._decider: threading.Thread | None = None
        self._sources_stop = threading.Event()
        self._wake = threading.Event()
        self._act_lock = threading.RLock()
        self._policy_lock = threading.Lock()  # the durable-rules host is not thread-safe
        self._events_lock = threading.Lock()
        self._decide_queue: queue.Queue[_Tick | None] = queue.Queue()
        self._shards: Any = None
        self._threads: list[threading.Thread] = []
        # Actuator calls only (they do I/O); bounded because idle threads cost memory and every
        # runnable one competes for the GIL with scoring and deciding.
        self._pool = ThreadPoolExecutor(
            max_workers=min(self.limits.max_concurrent, ACT_THREADS) + 2, thread_name_prefix="act"
        )
        # Journal work for the decider, from the actuator pool and the supervisor (see _decide_ticks).
        self._finished: queue.SimpleQueue[_Finished] = queue.SimpleQueue()
        self._settled: queue.SimpleQueue[_Settled] = queue.SimpleQueue()
        self._settle_pending: set[str] = set()
        self.latencies: dict[str, deque[float]] | None = (
            {
                k: deque(maxlen=200_000)
                for k in ("arrival_to_event", "event_to_journaled", "event_to_dispatch")
            }
            if record_latencies
            else None
        )
        self.points_scored = 0
        self.rows_scored = 0
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    # ================================================================ lifecycle
    def start(self) -> Engine:
        from engine.runtime.recovery import recover

        recover(self)
        if self.settings.workers and self.components.features_factory is None:
            from engine.runtime.shards import ShardPool

            self._shards = ShardPool(self.components.pipeline, self.settings.workers, self._on_scored)
        self._spawn("score", self._score_loop)
        self._decider = self._spawn("decide", self._decide_loop)
        self._spawn("supervise", self._supervise_loop)
        self._start_sources()
        self.ready.set()
        log.info("engine started (bundle %s, journal %s)", self.components.bundle_version, self.journal.path)
        return self

    def stop(self, *, drain: bool = True) -> None:
        """Stop sources, score what was accepted (up to ``drain_timeout_s``), finish actions, close."""
        self.ready.clear()
        self._sources_stop.set()
        if drain and self._threads:  # nothing scores in an engine that never started
            deadline = time.monotonic() + self.settings.drain_timeout_s
            while self.queue.depth and time.monotonic() < deadline:
                time.sleep(0.01)
            if self._shards is not None:
                self._shards.wait_idle(max(0.0, deadline - time.monotonic()))
            while self._decide_queue.qsize() and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.queue.depth or (self._shards is not None and self._shards.outstanding):
                log.warning("drain timed out with %d points unscored", self.queue.depth)
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            if thread is not self._decider:
                thread.join(timeout=10)
        if self._shards is not None:
            self._shards.close()  # its reader threads hand their last results over first
        self._decide_stop.set()  # the decider finishes what the scorers queued, then exits
        if self._decider is not None:
            self._decider.join(timeout=self.settings.drain_timeout_s)
        self._pool.shutdown(wait=True)
        if self._decider is not None and self._decider.is_alive():
            # Closing under a decider that still writes would lose its commit or crash it midway;
            # the journal stays open (the process is ending anyway) and recovery sorts it out.
            log.error(
                "the decider did not stop within %.0fs; journal %s left open",
                self.settings.drain_timeout_s,
                self.journal.path,
            )
            return
        self._decide_ticks([])  # outcomes of calls that returned after the decider stopped
        self.journal.close()
        log.info("engine stopped")

    def _spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=self._guard(name, target), name=f"selfheal-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _guard(self, stage: str, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception:  # a source dying must be loud but must not kill the engine
                log.exception("%s thread died", stage)
                self.metrics.errors.labels(stage).inc()

        return run

    def _start_sources(self) -> None:
        from engine.runtime.sources import PromMapping, scrape_loop, tail_ndjson

        src = self.settings.sources
        for path in src.files:
            self._spawn(
                f"tail:{path}",
                lambda p=path: tail_ndjson(
                    p, self._blocking_sink(f"file:{p}"), self._sources_stop, from_start=src.from_start
                ),
            )
        for target in src.prometheus:
            mapping = PromMapping.from_yaml(target.mapping)
            self._spawn(
                f"scrape:{target.url}",
                lambda t=target, m=mapping: scrape_loop(
                    t.url,
                    m,
                    t.interval_s,
                    self._blocking_sink(f"prometheus:{t.url}"),
                    self._sources_stop,
                    on_error=lambda url: self.metrics.scrape_errors.labels(url).inc(),
                ),
            )

    def _blocking_sink(self, source: str) -> Callable[[list[Point], list[Rejection]], bool]:
        def sink(points: list[Point], rejections: list[Rejection]) -> bool:
            self.reject(rejections, source)
            if not self.queue.put(points, stop=self._sources_stop):
                return False
            self.metrics.points_in.labels(source).inc(len(points))
            return True

        return sink

    # ================================================================ ingestion
    def ingest(self, points: Points, rejections: Sequence[Rejection] = (), *, source: str = "http") -> bool:
        """Offer parsed points; False when the queue is full (nothing was accepted: answer 429)."""
        if not self.queue.offer(points, arrival=time.perf_counter()):
            self.metrics.requests_throttled.inc()
            return False
        if points:
            self.metrics.points_in.labels(source).inc(len(points))
        self.reject(rejections, source)
        return True

    def reject(self, rejections: Sequence[Rejection], source: str) -> None:
        if not rejections:
            return
        for r in rejections:
            self.metrics.points_rejected.labels(source, r.field).inc()
        self.dead_letter.write(source, rejections)

    # ================================================================ scoring
    @property
    def shards(self) -> Any:
        """The scoring worker pool (``engine.runtime.shards.ShardPool``), or None when scoring in-process."""
        return self._shards

    @property
    def healthy(self) -> bool:
        """False when a scoring worker died (its services are no longer scored)."""
        return self._shards is None or not self._shards.failed

    def _score_loop(self) -> None:
        while not self._stop.is_set():
            if self._shards is not None and not self._shards.wait_idle(
                self.settings.tick_s, below=MAX_TICK_POINTS
            ):
                continue  # workers are busy: leave points in the bounded queue (429 when it fills)
            batches = self.queue.take(MAX_TICK_POINTS, self.settings.tick_s)
            if batches:
                try:
                    if self._shards is not None:
                        self._remember_metrics(batches)
                        self._shards.submit(batches)
                    else:
                        self.process(batches)
                except Exception:  # one bad tick must not stop scoring
                    log.exception("scoring tick failed")
                    self.metrics.errors.labels("score").inc()

    def _remember_metrics(self, batches: Sequence[tuple[float, Points]]) -> None:
        latest = self.latest_metric
        seen = time.time()
        for _, points in batches:
            last = points.latest() if isinstance(points, PointColumns) else points
            for _ts, service, metric, value in last:
                latest[(service, metric)] = (value, seen)

    def _on_scored(
        self, rows: list[Any], scores: np.ndarray, arrivals: list[float], n: int, elapsed: float
    ) -> None:
        """Results of one worker's micro-batch (sharded mode); serialised with every other tick."""
        with self._events_lock:
            self.points_scored += n
            if rows:
                self.metrics.scoring_latency.observe(elapsed)
                self.metrics.feature_rows.inc(len(rows))
                self.rows_scored += len(rows)
                self._events(rows, scores, arrivals)

    def process(self, batches: Sequence[tuple[float, Points]]) -> list[AnomalyEvent]:
        """One tick in-process: push points, score closed rows as one micro-batch, queue the events."""
        push = self.features.push
        latest = self.latest_metric
        rows: list[Any] = []
        arrivals: list[float] = []
        seen = time.time()
        n = 0
        for arrival, points in batches:
            n += len(points)
            for ts, service, metric, value in points:
                latest[(service, metric)] = (value, seen)
                closed = push(ts, service, metric, value)
                if closed:
                    rows.extend(closed)
                    arrivals.extend([arrival] * len(closed))
        self.points_scored += n
        if not rows:
            return []
        started = time.perf_counter()
        scores = self.components.pipeline.score_rows(rows)
        self.metrics.scoring_latency.observe(time.perf_counter() - started)
        self.metrics.feature_rows.inc(len(rows))
        self.rows_scored += len(rows)
        with self._events_lock:
            return self._events(rows, scores, arrivals)

    def _events(
        self, rows: Sequence[Any], scores: np.ndarray, arrivals: Sequence[float]
    ) -> list[AnomalyEvent]:
        now = time.time()
        X = np.asarray([r.values for r in rows], dtype=np.float64)
        events: list[AnomalyEvent] = []
        changes: list[AnomalyEvent] = []
        pipeline = self.components.pipeline
        for i, row in enumerate(rows):
            score = float(scores[i])
            anomalous = score > self.threshold
            service = row.service
            self.latest_score[service] = (score, now)
            contributing = self._attribution(service, X[i], anomalous)
            if not anomalous and not self.health.get(service, False):
                continue
            event = AnomalyEvent(
                id=new_id("evt"),
                service=service,
                detector=pipeline.detector,
                detector_version=self.components.detector_version,
                bundle_version=self.components.bundle_version,
                score=score,
                threshold=self.threshold,
                anomalous=anomalous,
                contributing=contributing,
                window_start=float(row.window_start),
                window_end=float(row.window_end),
                ts=float(row.ts),
                arrival=arrivals[i],
                metrics=self._metrics_of(service) if anomalous else {},
            )
            if anomalous:
                events.append(event)
            if self.health.get(service, False) != anomalous:
                self.health[service] = anomalous
                changes.append(event)
        if not events and not changes:
            return []
        emitted = time.perf_counter()
        for event in events:
            self.metrics.anomalies.labels(event.service).inc()
            self.metrics.arrival_to_event.observe(emitted - event.arrival)
            if self.latencies is not None:
                self.latencies["arrival_to_event"].append(emitted - event.arrival)
            if self.listeners:
                self._notify("anomaly", event.as_dict())
        # The policies now (ticks reach here one at a time, in order), the journal in the decider:
        # the two stages overlap, so a tick's decisions do not wait for the previous tick's commit.
        self._decide_queue.put(self._ask_policies(changes, events, emitted))
        return events

    def _metrics_of(self, service: str) -> dict[str, float]:
        latest = self.latest_metric
        return {m: latest[(service, m)][0] for m in self._spec_metrics if (service, m) in latest}

    # ================================================================ decisions
    def _decide_loop(self) -> None:
        """The journal's one hot-path writer: queued ticks (events, policies, safeguards), finished
        actuator calls and settled verifications, many of them per commit (one fsync).

        Events and the decisions they caused are committed together: after a crash there is never a
        journaled decision without its event, nor an event whose decisions were silently lost.
        """
        while True:
            try:
                items = [self._decide_queue.get(timeout=0.1)]
            except queue.Empty:
                if self._decide_stop.is_set():
                    return
                continue
            if items[0] is None and not self._decide_stop.is_set():
                # Only bookkeeping is waiting (finished calls, verdicts): let it ride in the next
                # tick's commit rather than commit (and hold the journal) on its own; at most one
                # scoring tick, so a fast simulated clock (chaos) loses no more than a tick.
                with contextlib.suppress(queue.Empty):
                    items.append(self._decide_queue.get(timeout=self.settings.tick_s))
            while len(items) < 64:
                try:
                    items.append(self._decide_queue.get_nowait())
                except queue.Empty:
                    break
            ticks = [item for item in items if item is not None]  # None: other journal work waits
            try:
                self._decide_ticks(ticks)
            except Exception:  # a failed batch must not stop deciding
                log.exception("deciding a batch of %d ticks failed", len(ticks))
                self.metrics.errors.labels("decide").inc()

    def _poke_decider(self) -> None:
        self._decide_queue.put(None)

    def _ask_policies(self, changes: list[AnomalyEvent], events: list[AnomalyEvent], emitted: float) -> _Tick:
        """One tick through the durable-rules host: health changes first, then the anomalies (so
        gating sees every root of the tick). Callers serialise ticks (``_events_lock``) and keep
        their order; nothing here touches the journal."""
        policies = self.components.policies
        decided: list[Decision] = []
        notes: list[tuple[str, dict[str, Any]]] = []
        with self._policy_lock:
            for event in changes:
                policies.set_health(event.service, event.anomalous, event.score)
            for event in events:
                try:
                    decided.extend(policies.decide(event))
                except Exception as exc:
                    log.exception("policy host failed on event %s", event.id)
                    self.metrics.errors.labels("policy").inc()
                    notes.append(("policy_error", {"event_id": event.id, "error": str(exc)}))
            # The host marks every posted service anomalous. A service whose last row of the tick
            # was normal must end healthy, or gating silences its dependents for good.
            posted = {event.service for event in events}
            last = {event.service: event for event in changes}
            for service, event in last.items():
                if service in posted and not event.anomalous:
                    policies.set_health(service, False, event.score)
        return _Tick(changes, events, emitted, decided, notes)

    def _decide_ticks(self, items: Sequence[_Tick]) -> None:
        """One short transaction for the journal: the ticks' events, their decisions through the
        safeguards, and the bookkeeping other threads handed over.

        Why this shape: every other journal write that happens often (an actuator call's outcome, a
        verification's verdict) is handed to this thread and rides in the same commit, so the
        decider never queues behind another writer for the journal lock; and the policies were
        asked before (``_ask_policies``), so the lock is held for SQL only. The safeguards run
        inside the transaction, so a decision sees the executions that earlier decisions of the
        same batch started.
        """
        dispatch: list[tuple[Decision, str, float | None]] = []
        notes: list[tuple[str, dict[str, Any]]] = [n for tick in items for n in tick.notes]
        decided = [(d, tick.emitted) for tick in items for d in tick.decided]
        journaled: list[tuple[Mapping[str, Any], str]] = []
        for tick in items:
            journaled += [({**e.as_dict(), "id": f"{e.id}-h"}, "health") for e in tick.changes]
            journaled += [(e.as_dict(), "anomaly") for e in tick.events]
        with self._act_lock:
            finished = _drain(self._finished)
            settled = _drain(self._settled)
            if not (journaled or decided or finished or settled or notes):
                return
            try:
                with self.journal.transaction():
                    self.journal.record_events(journaled, ts=time.time())
                    if decided:
                        batch = self._batch([d for d, _ in decided], notes)
                        for decision, emitted in decided:
                            self._enact(decision, emitted, batch)
                        self._journal_batch(batch, dispatch)
                    self._write_finished(finished)
                    self._write_settled(settled)
            except BaseException:  # rolled back: the bookkeeping goes in the next commit instead
                for f in finished:
                    self._finished.put(f)
                for v in settled:
                    self._settled.put(v)
                raise
        self._after_commit(dispatch, notes)
        self._after_finished(finished)
        self._after_settled(settled)

    def _after_commit(
        self, dispatch: list[tuple[Decision, str, float | None]], notes: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """Only once decisions and executions are durable: tell listeners, call actuators."""
        if self.latencies is not None:
            now = time.perf_counter()
            for _, _, emitted in dispatch:
                if emitted is not None:
                    self.latencies["event_to_journaled"].append(now - emitted)
        for kind, data in notes:
            self._notify(kind, data)
        for decision, execution_id, emitted in dispatch:
            call = ActionCall(decision.action, decision.params)
            self._dispatch(decision, execution_id, kind="action", call=call, emitted=emitted)

    def _enact(self, decision: Decision, emitted: float | None, batch: _Batch) -> None:
        """One decision through the safeguards; its journal rows are queued on ``batch``."""
        key = (decision.target, decision.rule, decision.action)
        if key in batch.active:
            # The same remedy is already waiting or under way: one incident, one action.
            self.metrics.decisions.labels("duplicate").inc()
            return
        verdict = self._verdict(decision, batch.counts, batch.now)
        record = decision.to_record()
        if not verdict.allowed:
            reason = f"{verdict.safeguard}: {verdict.reason}"
            batch.records.append((record, DecisionStatus.BLOCKED, reason))
            self.metrics.decisions.labels(f"blocked_{verdict.safeguard}").inc()
            batch.notes.append(("blocked", {"decision_id": decision.id, "safeguard": verdict.safeguard}))
            return
        batch.active.add(key)
        if decision.approval.required:
            batch.records.append((record, DecisionStatus.AWAITING_APPROVAL, None))
            batch.approvals.append(decision)
            self.metrics.decisions.labels("awaiting_approval").inc()
            return
        # A new decision's idempotency key cannot have been used: it goes straight to 'executing'.
        batch.records.append((record, DecisionStatus.EXECUTING, None))
        batch.starts.append((decision, record, emitted))
        batch.counts.started(decision.target, decision.rule, decision.replicas, batch.now)
        self.metrics.decisions.labels("executed").inc()

    def _journal_batch(self, batch: _Batch, dispatch: list[tuple[Decision, str, float | None]]) -> None:
        """The batch's decisions, approval requests and executions: a few multi-row statements."""
        journal = self.journal
        journal.record_decisions(batch.records)
        for decision in batch.approvals:
            ttl = decision.approval.ttl_s or self.settings.approval_ttl_s
            approval_id = journal.create_approval(
                decision.id, ttl_s=ttl, allowed_approvers=decision.approval.approvers
            )
            self._pending_approvals += 1
            batch.notes.append(
                ("approval_requested", {"decision_id": decision.id, "approval_id": approval_id})
            )
        ids = journal.start_new_executions(
            [(record, f"{d.id}:action", d.replicas) for d, record, _ in batch.starts]
        )
        dispatch.extend((d, eid, emitted) for (d, _, emitted), eid in zip(batch.starts, ids, strict=True))

    def _batch(
        self, decisions: Sequence[Decision], notes: list[tuple[str, dict[str, Any]]] | None = None
    ) -> _Batch:
        """What the safeguards of a batch of decisions need, read from the journal in one query;
        ``notes`` collects what listeners are told after the commit."""
        now = time.time()
        cap = 1 + max(
            [self.limits.max_actions_per_hour]
            + [max(d.safeguards.max_per_hour or 0, d.safeguards.max_per_hour_global or 0) for d in decisions]
        )
        counts, active = self.journal.decision_context(
            [d.target for d in decisions], [d.rule for d in decisions if d.rule], now=now, cap=cap
        )
        return _Batch(now, counts, active, notes=[] if notes is None else notes)

    def _verdict(self, decision: Decision, counts: SafeguardCounts, now: float) -> safeguards.Verdict:
        return safeguards.check(
            decision,
            counts.for_target(decision.target, decision.rule),
            now=now,
            limits=self.limits,
            paused=self.paused,
            replicas=self.components.replicas(decision.target),
            maintenance=self.maintenance,
        )

    def _start(self, decision: Decision) -> str | None:
        """Start a journaled decision (approved or recovered): its execution row, committed before
        the call; None when it already ran (its idempotency key was used)."""
        execution_id = self.journal.start_execution(
            decision.to_record(),
            kind="action",
            action=decision.action,
            params=decision.params,
            idempotency_key=f"{decision.id}:action",
            replicas=decision.replicas,
        )
        if execution_id is None:
            log.warning("decision %s was already executed; not executing it again", decision.id)
            return None
        self.journal.set_decision_status(decision.id, DecisionStatus.EXECUTING)
        return execution_id

    def run_ready(self, decision: Decision) -> str:
        """Execute a journaled decision that is cleared to run (approved, or recovered after a crash)."""
        with self._act_lock:
            batch = self._batch([decision])
            verdict = self._verdict(decision, batch.counts, batch.now)
            if not verdict.allowed:
                self.journal.set_decision_status(
                    decision.id, DecisionStatus.BLOCKED, f"{verdict.safeguard}: {verdict.reason}"
                )
                self.metrics.decisions.labels(f"blocked_{verdict.safeguard}").inc()
                return DecisionStatus.BLOCKED
            with self.journal.transaction():
                self.journal.set_decision_status(decision.id, DecisionStatus.READY)
                started = self._start(decision)
        if started is not None:
            self._dispatch(
                decision, started, kind="action", call=ActionCall(decision.action, decision.params)
            )
        return DecisionStatus.EXECUTING

    # ================================================================ execution
    def _dispatch(
        self,
        decision: Decision,
        execution_id: str,
        *,
        kind: str,
        call: ActionCall,
        emitted: float | None = None,
    ) -> None:
        try:
            self._pool.submit(self._execute, decision, execution_id, kind, call, emitted)
        except RuntimeError:  # the pool is shut down: the engine is stopping
            log.error(
                "engine stopping: %s %s for %s was journaled but not run; the next start reports it",
                kind,
                call.action,
                decision.id,
            )

    def _execute(
        self, decision: Decision, execution_id: str, kind: str, call: ActionCall, emitted: float | None
    ) -> None:
        """Call the actuator (in the pool); the decider journals the outcome (``_write_finished``)."""
        if emitted is not None:
            lag = time.perf_counter() - emitted
            self.metrics.event_to_dispatch.observe(lag)
            if self.latencies is not None:
                self.latencies["event_to_dispatch"].append(lag)
        self._notify("dispatch", {"decision_id": decision.id, "kind": kind, "action": call.action})
        try:
            result = self.components.actions.run(
                call,
                target=decision.target,
                idempotency_key=f"{decision.id}:{kind}",
                timeout_s=self.settings.action_timeout_s,
            )
        except Exception as exc:
            error = str(exc) if isinstance(exc, ActionError) else f"{type(exc).__name__}: {exc}"
            log.warning("%s %s on %s failed: %s", kind, call.action, decision.target, error)
            self._finished.put(_Finished(decision, execution_id, kind, call, None, error, time.time()))
        else:
            outcome = _jsonable(result)
            self._finished.put(_Finished(decision, execution_id, kind, call, outcome, None, time.time()))
        self._poke_decider()

    def _write_finished(self, done: Sequence[_Finished]) -> None:
        """Journal actuator outcomes (inside the decider's transaction).

        Why not in the pool thread: each finished call would be its own fsync'd transaction, and a
        burst of them queued on the journal lock in front of the decider. Until this commit an
        execution stays 'started': a crash in between reports it (never repeats it), as for a
        crash during the call itself.
        """
        if not done:
            return
        journal = self.journal
        failed = [f for f in done if f.error is not None]
        ok = [f for f in done if f.error is None]
        journal.finish_executions(
            [(f.execution_id, ExecutionStatus.FAILED, None, f.error) for f in failed]
            + [(f.execution_id, ExecutionStatus.SUCCEEDED, f.result, None) for f in ok]
        )
        verify = [f for f in ok if f.kind == "action"]
        # All in one commit: a crash between a failed execution and its decision's status would leave
        # the decision 'executing' forever, and every later decision for its rule, target and action
        # dropped as a duplicate.
        journal.settle_executions(
            [f.execution_id for f in failed] + [f.execution_id for f in ok if f.kind != "action"]
        )
        journal.set_decision_statuses(
            [(f.decision.id, DecisionStatus.FAILED, f.error) for f in failed if f.kind == "action"]
            + [(f.decision.id, DecisionStatus.VERIFYING, None) for f in verify]
        )
        journal.start_verifications(
            [(f.decision.id, f.execution_id, f.returned, _deadline(f.decision, f.returned)) for f in verify]
        )

    def _after_finished(self, done: Sequence[_Finished]) -> None:
        for f in done:
            data = {"decision_id": f.decision.id, "kind": f.kind}
            if f.error is None:
                self.metrics.actions.labels("succeeded").inc()
                self._notify("executed", {**data, "action": f.call.action})
                continue
            self.metrics.actions.labels("failed").inc()
            if f.kind == "action":
                self._escalate(f.decision, f"action failed: {f.error}")
            self._notify("action_failed", {**data, "error": f.error})
        if done:
            self._wake.set()  # the supervisor starts watching the new steady states

    def begin_verification(self, decision: Decision, execution_id: str) -> None:
        with self.journal.transaction():
            self.journal.start_verification(
                decision.id, execution_id, deadline_ts=_deadline(decision, time.time())
            )
            self.journal.set_decision_status(decision.id, DecisionStatus.VERIFYING)

    def _escalate(self, decision: Decision, why: str) -> None:
        """Tell a human: the policy's escalation action, else the configured webhook, else a log line."""
        payload = {
            "decision_id": decision.id,
            "service": decision.service,
            "target": decision.target,
            "action": decision.action,
            "policy": decision.policy,
            "rule": decision.rule,
            "reason": why,
        }
        call = decision.escalate
        url = (decision.verify.escalate_to if decision.verify else None) or self.settings.escalation_webhook
        if call is None and url:
            call = ActionCall("webhook", {"url": url, "payload": payload})
        if call is None:
            log.info("escalation for %s (no webhook configured, so only logged): %s", decision.id, why)
            return
        call = ActionCall(
            call.action, {**call.params, "payload": {**call.params.get("payload", {}), **payload}}
        )
        self._follow_up(decision, "escalation", call)

    def _follow_up(
        self, decision: Decision, kind: str, call: ActionCall, *, status: str | None = None
    ) -> None:
        """Escalations and rollbacks: journal the execution first (its idempotency key makes it run
        at most once, across restarts too), optionally move the decision's status, then dispatch."""
        execution_id = self.journal.start_execution(
            decision.to_record(),
            kind=kind,
            action=call.action,
            params=call.params,
            idempotency_key=f"{decision.id}:{kind}",
        )
        if execution_id is None:
            return
        if status is not None:
            self.journal.set_decision_status(decision.id, status)
        self._dispatch(decision, execution_id, kind=kind, call=call)

    # ================================================================ supervision
    def _supervise_loop(self) -> None:
        interval = min(self.settings.verify_interval_s, 1.0)
        spacing = min(interval, SUPERVISE_SPACING_S)
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.supervise()
            except Exception:
                log.exception("supervision pass failed")
                self.metrics.errors.labels("supervise").inc()
            self._wake.wait(interval)
            # Wakes that come in a burst (every finished action wakes us) share one pass: fewer,
            # larger commits, so the decider seldom finds the journal lock taken.
            self._stop.wait(max(0.0, spacing - (time.monotonic() - began)))
            self._wake.clear()

    def supervise(self, now: float | None = None) -> None:
        """One pass: kill switch, approvals (expire, run approved, settle rejected), verifications."""
        now = time.time() if now is None else now
        control = self.journal.control(PAUSE_KEY)
        self.paused = bool(control and control["value"])
        pending = self.journal.decisions_with_status([DecisionStatus.AWAITING_APPROVAL])
        waiting = 0
        for row in pending:
            approval = self.journal.approval_for(row["id"])
            if approval is None:
                continue
            status = approval["status"]
            if status == ApprovalStatus.PENDING and approval["expires_ts"] <= now:
                decision = Decision.from_record(row)
                if decision.approval.on_expiry == "approve":  # only when the policy says so explicitly
                    if self.journal.settle_approval(
                        approval["id"], ApprovalStatus.APPROVED, approver="expiry", reason="expired", now=now
                    ):
                        self.run_ready(decision)
                elif self.journal.settle_approval(
                    approval["id"], ApprovalStatus.EXPIRED, approver=None, reason="expired", now=now
                ):
                    self.journal.set_decision_status(row["id"], DecisionStatus.DENIED, "approval expired")
                    self._notify(
                        "approval_expired", {"decision_id": row["id"], "approval_id": approval["id"]}
                    )
            elif status == ApprovalStatus.PENDING:
                waiting += 1
            elif status == ApprovalStatus.APPROVED:
                self.run_ready(Decision.from_record(row))
            else:
                self.journal.set_decision_status(row["id"], DecisionStatus.DENIED, f"approval {status}")
        self._pending_approvals = waiting
        self._check_verifications(now)

    def _check_verifications(self, now: float) -> None:
        """Every watched steady state; the verified and the overdue go to the decider to journal.

        Verdicts already handed over (``_settle_pending``) are skipped until the decider committed
        them, so a verdict is never journaled (nor a rollback started) twice.
        """
        out: list[_Settled] = []
        for verification, row in self.journal.watching_with_decisions():
            vid = verification["id"]
            if vid in self._settle_pending:
                continue
            decision = Decision.from_record(row)
            spec = decision.verify or _default_verify(self.threshold)
            state = steady_state(
                spec,
                decision.target,
                since=verification["started_ts"],
                scores=self.latest_score,
                metrics=self.latest_metric,
            )
            if state.holds:
                first = self._settling.setdefault(vid, now)
                if now - first >= spec.settle_s:
                    out.append(_Settled(verification, decision, state, verified=True))
                continue
            self._settling.pop(vid, None)
            if now >= verification["deadline_ts"]:
                out.append(_Settled(verification, decision, state, verified=False))
        if not out:
            return
        for settled in out:
            self._settle_pending.add(settled.verification["id"])
            self._settled.put(settled)
        if self._decider is not None and self._decider.is_alive():
            self._poke_decider()
        else:  # not started (tests drive supervise by hand) or stopping: write here
            self._decide_ticks([])

    def _write_settled(self, done: Sequence[_Settled]) -> None:
        """Journal verification verdicts (inside the decider's transaction)."""
        if not done:
            return
        journal = self.journal
        journal.finish_verifications(
            [(s.verification["id"], "verified" if s.verified else "failed", s.state.detail) for s in done]
        )
        journal.set_decision_statuses(
            [
                (s.decision.id, DecisionStatus.VERIFIED, None)
                if s.verified
                else (
                    s.decision.id,
                    DecisionStatus.VERIFICATION_FAILED,
                    f"steady state not back by the deadline: {s.state.detail}",
                )
                for s in done
            ]
        )
        journal.settle_executions([s.verification["execution_id"] for s in done])

    def _after_settled(self, done: Sequence[_Settled]) -> None:
        for s in done:
            vid = s.verification["id"]
            self._settling.pop(vid, None)
            self._settle_pending.discard(vid)
            detail = {"decision_id": s.decision.id, "detail": s.state.detail}
            if s.verified:
                self.metrics.actions.labels("verified").inc()
                self._notify("verified", detail)
            else:
                self.metrics.actions.labels("verification_failed").inc()
                self._notify("verification_failed", detail)
                self._after_failed_verification(s.verification, s.decision, s.state)

    def _after_failed_verification(
        self, verification: dict[str, Any], decision: Decision, state: Any
    ) -> None:
        """Escalate and roll back as the policy says (unless the kill switch or maintenance forbid it)."""
        spec = decision.verify or _default_verify(self.threshold)
        rollback = "rollback" in spec.on_failure and decision.inverse is not None
        refusal = self._rollback_refusal(decision) if rollback else None
        if refusal is not None:
            # A rollback is an action too: a paused engine or a maintenance window stops it; a human
            # decides instead (escalated even when the policy did not ask for it).
            reason = f"verification failed; rollback blocked by {refusal.safeguard}: {refusal.reason}"
            self.journal.set_decision_status(decision.id, DecisionStatus.BLOCKED, reason)
            self.metrics.decisions.labels(f"blocked_{refusal.safeguard}").inc()
            self._escalate(decision, f"{reason} ({state.detail})")
            return
        if "escalate" in spec.on_failure:
            self._escalate(decision, f"verification failed: {state.detail}")
        if rollback and decision.inverse is not None:
            done = self.journal.execution(verification["execution_id"]) or {}
            result = done.get("result")
            learned = result.get("inverse_params") if isinstance(result, dict) else None
            call = ActionCall(decision.inverse.action, {**decision.inverse.params, **(learned or {})})
            self._follow_up(decision, "rollback", call, status=DecisionStatus.ROLLED_BACK)

    def _rollback_refusal(self, decision: Decision) -> safeguards.Verdict | None:
        """Only the kill switch and maintenance windows stop a rollback: rate limits and the circuit
        breaker would keep a failed change in place, which is what the rollback undoes."""
        verdict = safeguards.check(
            decision,
            _NO_COUNTS,
            now=time.time(),
            limits=safeguards.GlobalLimits(),
            paused=self.paused,
            maintenance=self.maintenance,
        )
        return None if verdict.allowed or verdict.safeguard not in _ROLLBACK_GUARDS else verdict

    # ================================================================ operator actions
    def set_paused(self, paused: bool, *, actor: str, reason: str | None = None) -> None:
        """The kill switch: journaled (it survives restarts) and applied at once."""
        self.journal.set_control(PAUSE_KEY, paused, actor=actor, reason=reason)
        self.paused = paused
        log.log(  # paused is a degraded state worth a warning; resuming is back to normal
            logging.WARNING if paused else logging.INFO,
            "actions %s by %s%s",
            "paused" if paused else "resumed",
            actor,
            f": {reason}" if reason else "",
        )
        self._notify("paused" if paused else "resumed", {"actor": actor, "reason": reason})

    def settle_approval(
        self, approval_id: str, *, approve: bool, approver: str, reason: str | None
    ) -> dict[str, Any]:
        """Approve or reject a pending request; the supervisor runs approved decisions at once."""
        approval = self.journal.approval(approval_id)
        if approval is None:
            raise ApprovalRefused(
                f"no approval request {approval_id}",
                status=404,
                hint="list them with `selfheal approvals list`",
            )
        if approval["status"] != ApprovalStatus.PENDING:
            raise ApprovalRefused(f"approval {approval_id} is already {approval['status']}", status=409)
        if approval["expires_ts"] <= time.time():
            self._wake.set()
            raise ApprovalRefused(f"approval {approval_id} has expired (expiry denies)", status=409)
        allowed = approval.get("allowed_approvers") or []
        if allowed and approver not in allowed:
            raise ApprovalRefused(
                f"{approver!r} may not approve this action",
                status=403,
                hint=f"approvers: {', '.join(allowed)}",
            )
        if not approve and not reason:
            raise ApprovalRefused("a rejection needs a reason", status=422, hint="pass --reason")
        status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
        if not self.journal.settle_approval(approval_id, status, approver=approver, reason=reason):
            raise ApprovalRefused(f"approval {approval_id} was settled meanwhile", status=409)
        self._notify("approval_" + status, {"approval_id": approval_id, "approver": approver})
        self._wake.set()
        out = self.journal.approval(approval_id)
        assert out is not None
        return out

    def _notify(self, kind: str, data: dict[str, Any]) -> None:
        for listener in self.listeners:
            try:
                listener(kind, data)
            except Exception:
                log.exception("listener failed on %s", kind)


@dataclass
class _Batch:
    """The safeguard state a batch of decisions is checked against (kept current within the batch),
    and the journal rows the batch will write."""

    now: float
    counts: SafeguardCounts
    active: set[tuple[str, str, str]]
    notes: list[tuple[str, dict[str, Any]]]
    records: list[tuple[dict[str, Any], str, str | None]] = field(default_factory=list)
    approvals: list[Decision] = field(default_factory=list)
    starts: list[tuple[Decision, dict[str, Any], float | None]] = field(default_factory=list)


@dataclass(frozen=True)
class _Tick:
    """One scoring tick on its way to the journal, with what the policies decided about it."""

    changes: list[AnomalyEvent]  # health changes
    events: list[AnomalyEvent]  # anomalies
    emitted: float  # perf_counter when the tick's events were emitted (for latency)
    decided: list[Decision]
    notes: list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class _Settled:
    """A verification verdict, waiting for the decider to journal it."""

    verification: dict[str, Any]
    decision: Decision
    state: Any
    verified: bool


def _drain(q: queue.SimpleQueue[Any]) -> list[Any]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


@dataclass(frozen=True)
class _Finished:
    """An actuator call's outcome, waiting for the supervisor to journal it."""

    decision: Decision
    execution_id: str
    kind: str
    call: ActionCall
    result: Any
    error: str | None
    returned: float  # wall time the call returned: observations after it verify the action


_ROLLBACK_GUARDS = ("kill_switch", "maintenance")
_NO_COUNTS = TargetCounts(None, 0, 0, 0, 0, 0)


def _deadline(decision: Decision, returned: float) -> float:
    """When the steady state must be back, for an action that returned at ``returned``."""
    return returned + (decision.verify.deadline_s if decision.verify else 300.0)


def _default_verify(threshold: float) -> Any:
    from engine.runtime.model import VerifySpec

    return VerifySpec(deadline_s=300.0, score_below=threshold)


def _jsonable(value: Any) -> Any:
    import json

    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict):
        value = as_dict()
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
