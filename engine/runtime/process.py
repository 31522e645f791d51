"""The engine's process: threads, queues and lifecycle around the stages.

The stages, each a module whose core is tested without threads: scoring (``scoring``, with the
diagnosis' per-service half), event making (``events``), diagnosis (``engine.diagnosis``), the
policies (``policies``), deciding (``decider``), executing (``executor``) and supervising
(``supervisor``); ``recovery`` runs once at start. The seam between them is the tick. Here:
- sources (HTTP handlers, file tails, scrapers) only parse and hand their points to the door
  (``intake.Door``: the series cap, the bounded queue, the dead letter);
- one scoring thread takes a tick's batches and scores them (or hands them to scoring worker
  processes, ``workers: N``, whose results come back on one reader thread per worker); events and
  the policies' decisions are made one tick at a time, in order, and handed to
- the journal's side (``engine.runtime.writer``): one writer thread that commits and dispatches,
  the actuator pool and the supervisor. A tick's policy work overlaps the previous tick's commit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.records import Diagnosis
from engine.runtime.bus import Bus
from engine.runtime.components import EngineComponents
from engine.runtime.config import EngineSettings
from engine.runtime.events import EventMaker, Observations
from engine.runtime.intake import Accepted, DeadLetter, Door, Intake, failed_tick
from engine.runtime.journal import Journal
from engine.runtime.lograte import Repeating
from engine.runtime.metrics import EngineMetrics, EngineState
from engine.runtime.notify import Notifier
from engine.runtime.policies import ask
from engine.runtime.scoring import Scored, ScoreLog, ScoringStage
from engine.runtime.shards import ShardPool, StatesAt
from engine.runtime.sources import IngestQueue, source_loops
from engine.runtime.states import state_store
from engine.runtime.writer import LATENCIES, Writer, spawn
from engine.telemetry.points import Points, Rejection

log = logging.getLogger(__name__)

MAX_TICK_POINTS = 20_000  # per scoring tick: short ticks keep arrival-to-event latency low


class Engine:
    """One running engine. ``start()``, feed it (``ingest``), ``stop()``; or run it with ``serve``."""

    def __init__(
        self,
        components: EngineComponents,
        settings: EngineSettings,
        *,
        journal_path: Path | str,
        dead_letter_path: Path,
        record_latencies: bool = False,
    ) -> None:
        self.components, self.settings = components, settings
        scorer = components.pipeline
        self.journal = Journal(journal_path, exclusive=settings.sources.redis is None)  # replicas share it
        self.queue = IngestQueue(settings.queue_max_points)
        self.observations = Observations()
        self.metrics = EngineMetrics(self._state)  # first: every stage counts its errors there
        self.states_path = settings.states_path(journal_path)
        store = None if settings.workers else state_store(settings, self.states_path, scorer)  # else theirs
        snapshot_s, signer = settings.state_snapshot_s or 0, None if settings.workers else components.signer()
        self.scoring = ScoringStage(
            scorer, store=store, snapshot_s=snapshot_s, on_error=self.metrics.error, signer=signer
        )
        self.score_log = ScoreLog(settings.scores_file) if settings.scores_file else None
        self.events = EventMaker(
            detector=scorer.detector,
            threshold=scorer.threshold_,
            feature_names=list(scorer.feature_names),
            bundle_version=components.bundle_version,
            detector_version=components.detector_version,
        )
        self.diagnosis = components.diagnosis_stage()
        self.diagnoses: dict[str, Diagnosis] = {}  # service -> its latest event's (console, gauges)
        self.writer = Writer(
            self.journal,
            components,
            settings,
            self.observations,
            notify=self._notify,
            latency=self._latency,
            on_error=self.metrics.error,
        )
        self.intake = Intake(settings, self.metrics.registry)
        self.dead_letter = DeadLetter.from_settings(dead_letter_path, settings)
        self._stop, self._sources_stop = threading.Event(), threading.Event()
        self.door = Door(self.intake, self.queue, self.dead_letter, self.metrics, stop=self._sources_stop)
        self.ready = threading.Event()
        self.latencies = {k: deque(maxlen=200_000) for k in LATENCIES} if record_latencies else None
        self.points_scored = self.rows_scored = 0  # points_scored: scored, or dead-lettered (_unscored)
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.notifier = Notifier(settings.notifications, self.journal, link_base=settings.link_base())
        if settings.notifications:
            self.listeners.append(self.notifier.hear)
        self.shards: ShardPool | None = None
        self._events_lock = threading.Lock()  # ticks reach events and policies one at a time
        self._ticks_failing = Repeating(log, "scoring ticks")
        self._threads: list[threading.Thread] = []
        redis = settings.sources.redis  # a replica: telemetry and pushes through Redis Streams
        self.bus = Bus(self, redis, str(journal_path)) if redis is not None else None

    @property
    def paused(self) -> bool:
        return self.writer.decider.paused

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def healthy(self) -> bool:
        """False when a scoring worker died (its services are no longer scored)."""
        return self.shards is None or not self.shards.failed

    # ================================================================ lifecycle
    def start(self) -> Engine:
        s = self.settings
        self.notifier.start()
        self.events.health.update(self.writer.start())  # recovery first, then its threads
        if s.workers:  # each worker signs its services' rows for the diagnosis (a Signer copy each)
            at, signer = StatesAt(s, self.states_path), self.components.signer()
            self.shards = ShardPool(self.components.pipeline, s.workers, self._scored, at, signer)
        failed = lambda url: self.metrics.scrape_errors.labels(url).inc()  # noqa: E731
        loops = source_loops(s.sources, self.intake.names, self.door.sink, self._sources_stop, failed)
        for name, loop in [("score", self._score_loop), *loops]:
            self._threads.append(spawn(name, loop, self.metrics.error))
        if self.bus is not None:
            self.bus.start(self._sources_stop)
        self.ready.set()
        log.info("engine started (bundle %s, journal %s)", self.components.bundle_version, self.journal.path)
        return self

    def stop(self, *, drain: bool = True) -> None:
        """Stop sources, score what was accepted (up to ``drain_timeout_s``), finish actions, close."""
        self.ready.clear()
        self._sources_stop.set()
        timeout = self.settings.drain_timeout_s
        if drain and self._threads:  # nothing scores in an engine that never started
            deadline = time.monotonic() + timeout
            while self.queue.depth and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.shards is not None:
                self.shards.wait_idle(max(0.0, deadline - time.monotonic()))
            while self.writer.backlog and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.queue.depth or (self.shards is not None and self.shards.outstanding):
                log.warning("drain timed out with %d points unscored", self.queue.depth)
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self.shards is not None:
            self.shards.close()  # its reader threads hand their last results over first
        self.scoring.close()  # after the scoring thread: the last snapshot of the states
        if self.score_log is not None:
            self.score_log.close()
        stopped = self.writer.stop(timeout)
        if self.bus is not None:  # after the last commit: acknowledge, then release the leases
            self.bus.close(journaled=stopped)
        self.notifier.stop(min(timeout, 10.0))  # after the writer: its last commit may notify
        if stopped:
            self.journal.close()
            log.info("engine stopped")

    # ================================================================ ingestion
    def ingest(
        self, points: Points, rejections: Sequence[Rejection] = (), *, source: str = "http"
    ) -> Accepted | None:
        """Offer parsed points at the door (``Door.offer``: the series cap, then the queue; None
        answers 429). A replica puts them in the streams instead (``engine.runtime.bus``): their
        partition's owner scores them."""
        if self.bus is not None:
            published = self.bus.publish(points)
            if published is None:
                self.metrics.requests_throttled.inc()
                return None
            return Accepted(published, self.door.took(source, [], list(rejections)).rejections)
        return self.door.offer(points, rejections, source)

    def _forget(self, services: Sequence[str]) -> None:
        """Drop the state of services the intake forgot as idle: features here (the scoring thread
        owns them) or in the workers, and what events and observations keep of them."""
        if self.shards is not None:
            self.shards.forget(services)
        else:
            self.scoring.forget(services)
        with self._events_lock:
            self.observations.forget(services)
            self.events.forget(services)
            if self.diagnosis is not None:
                self.diagnosis.forget(services)
            for service in services:
                self.diagnoses.pop(service, None)
                with contextlib.suppress(KeyError):  # a service with no anomaly has no label
                    self.metrics.anomalies.remove(service)

    # ================================================================ scoring, events, policies
    def _score_loop(self) -> None:
        while not self._stop.is_set():
            idle = self.intake.idle_services()
            if idle:
                self._forget(idle)
            if self.shards is not None and not self.shards.wait_idle(
                self.settings.tick_s, below=MAX_TICK_POINTS
            ):
                continue  # workers are busy: leave points in the bounded queue (429 when it fills)
            batches = self.queue.take(MAX_TICK_POINTS, self.settings.tick_s)
            if not batches:
                continue
            counted = self.points_scored
            try:
                if self.shards is not None:
                    self.shards.submit(batches)
                else:
                    self._scored(self.scoring.step(batches))
                self._ticks_failing.worked()
            except Exception as exc:  # one bad tick must not stop scoring
                self._ticks_failing.failed("scoring tick failed")
                self.metrics.error("score")
                if self.shards is None and self.points_scored == counted:
                    self._unscored(batches, exc)

    def _unscored(self, batches: Sequence[tuple[float, Points]], exc: Exception) -> None:
        """A tick that failed before its points were counted: dead-lettered, then counted as done
        (``intake.failed_tick`` says why)."""
        refused = failed_tick(batches, exc)
        self.metrics.points_rejected.labels("scoring", "tick").inc(len(refused))
        self.dead_letter.write("scoring", refused)
        with self._events_lock:
            self.points_scored += len(refused)

    def _scored(self, scored: Scored) -> None:
        """One scored tick (in-process or from a worker): events, the policies, then the writer."""
        with self._events_lock:
            if self.score_log is not None:  # first: points_scored says these rows are on file
                self.score_log.write(scored)
            self.points_scored += scored.points
            self.observations.saw(scored, time.time())
            if scored.refused:
                self.metrics.rows_refused.inc(len(scored.refused))
                refused = [Rejection(-1, "features", r.reason, r.as_dict()) for r in scored.refused]
                self.dead_letter.write("scoring", refused)
            if not scored.rows:
                return
            self.metrics.scoring_latency.observe(scored.seconds)
            self.metrics.feature_rows.inc(len(scored.rows))
            self.rows_scored += len(scored.rows)
            made = self.events.step(scored, self.observations)
            if self.diagnosis is not None:
                made = self.diagnosis.step(scored, made)
            if not (made.events or made.changes):
                return
            for event in made.events:
                self.metrics.anomalies.labels(event.service).inc()
                if event.diagnosis is not None:
                    self.diagnoses[event.service] = event.diagnosis
                self._latency("arrival_to_event", made.emitted - event.arrival)
                if self.listeners:
                    self._notify("anomaly", event.model_dump())
            self.writer.submit(ask(self.components.policies, made))

    # ================================================================ gauges and notes
    def _state(self) -> EngineState:
        """The state the gauges show (copies: the scoring thread keeps writing the originals)."""
        supervisor = self.writer.supervisor
        return EngineState(
            queue_depth=self.queue.depth,
            paused=self.paused,
            approvals_pending=supervisor.pending_approvals,
            oldest_approval_ts=supervisor.oldest_pending_ts,
            threshold=self.events.threshold,
            scores=self.observations.scores.copy(),
            anomalous=self.events.health.copy(),
            diagnoses=self.diagnoses.copy(),
            bundle=self.components.versions(),
        )

    def _latency(self, name: str, seconds: float) -> None:
        histogram = getattr(self.metrics, name, None)
        if histogram is not None:
            histogram.observe(seconds)
        if self.latencies is not None:
            self.latencies[name].append(seconds)

    def _notify(self, kind: str, data: dict[str, Any]) -> None:
        self.metrics.count(kind, data)
        for listener in self.listeners:
            try:
                listener(kind, data)
            except Exception:
                log.exception("listener failed on %s", kind)
