"""The engine's process: threads, queues and lifecycle around the stages.

The stages, each a module whose core is tested without threads: scoring (``scoring``), event
making (``events``), the policies (``policies``), deciding (``decider``), executing (``executor``)
and supervising (``supervisor``); ``recovery`` runs once at start. The seam between them is the
tick. Here:
- sources (HTTP handlers, file tails, scrapers) only parse and ``offer`` to the bounded queue;
- one scoring thread takes a tick's batches and scores them (or hands them to scoring worker
  processes, ``workers: N``, whose results come back on one reader thread per worker); events and
  the policies' decisions are made one tick at a time, in order, and handed to
- the journal's side (``engine.runtime.writer``): one writer thread that commits and dispatches,
  the actuator pool and the supervisor. A tick's policy work overlaps the previous tick's commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.runtime.components import EngineComponents
from engine.runtime.config import EngineSettings
from engine.runtime.events import EventMaker, Observations
from engine.runtime.journal import Journal
from engine.runtime.metrics import EngineMetrics, EngineState
from engine.runtime.notify import Notifier
from engine.runtime.policies import ask
from engine.runtime.scoring import Scored, ScoringStage
from engine.runtime.shards import ShardPool
from engine.runtime.sources import DeadLetter, IngestQueue, PromMapping, scrape_loop, tail_ndjson
from engine.runtime.writer import Writer, spawn
from engine.telemetry.points import Point, Points, Rejection

log = logging.getLogger(__name__)

MAX_TICK_POINTS = 20_000  # per scoring tick: short ticks keep arrival-to-event latency low
LATENCIES = ("arrival_to_event", "event_to_journaled", "event_to_dispatch")


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
        self.components, self.settings = components, settings
        scorer = components.pipeline
        self.journal = Journal(journal_path)
        self.queue = IngestQueue(settings.queue_max_points)
        self.dead_letter = DeadLetter(dead_letter_path)
        self.observations = Observations()
        self.scoring = ScoringStage(scorer)
        self.events = EventMaker(
            detector=scorer.detector,
            threshold=scorer.threshold_,
            feature_names=list(scorer.feature_names),
            bundle_version=components.bundle_version,
            detector_version=components.detector_version,
        )
        self.metrics = EngineMetrics(self._state)
        self.writer = Writer(
            self.journal,
            components,
            settings,
            self.observations,
            notify=self._notify,
            latency=self._latency,
            on_error=lambda stage: self.metrics.errors.labels(stage).inc(),
        )
        self.ready = threading.Event()
        self.latencies = {k: deque(maxlen=200_000) for k in LATENCIES} if record_latencies else None
        self.points_scored = self.rows_scored = 0
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.notifier = Notifier(settings.notifications, self.journal, link_base=settings.link_base())
        if settings.notifications:
            self.listeners.append(self.notifier.hear)
        self.shards: ShardPool | None = None
        self._events_lock = threading.Lock()  # ticks reach events and policies one at a time
        self._stop, self._sources_stop = threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []

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
        if s.workers:
            self.shards = ShardPool(self.components.pipeline, s.workers, self._scored)
        self._spawn("score", self._score_loop)
        for path in s.sources.files:
            sink = self._blocking_sink(f"file:{path}")
            self._spawn(
                f"tail:{path}",
                lambda p=path, k=sink: tail_ndjson(p, k, self._sources_stop, from_start=s.sources.from_start),
            )
        for t in s.sources.prometheus:
            m, sink = PromMapping.from_yaml(t.mapping), self._blocking_sink(f"prometheus:{t.url}")
            failed = lambda url: self.metrics.scrape_errors.labels(url).inc()  # noqa: E731
            self._spawn(
                f"scrape:{t.url}",
                lambda t=t, m=m, k=sink, e=failed: scrape_loop(
                    t.url, m, t.interval_s, k, self._sources_stop, on_error=e
                ),
            )
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
        stopped = self.writer.stop(timeout)
        self.notifier.stop(min(timeout, 10.0))  # after the writer: its last commit may notify
        if stopped:
            self.journal.close()
            log.info("engine stopped")

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        self._threads.append(spawn(name, target, lambda stage: self.metrics.errors.labels(stage).inc()))

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
        for r in rejections:
            self.metrics.points_rejected.labels(source, r.field).inc()
        self.dead_letter.write(source, rejections)

    def _blocking_sink(self, source: str) -> Callable[[list[Point], list[Rejection]], bool]:
        def sink(points: list[Point], rejections: list[Rejection]) -> bool:
            self.reject(rejections, source)
            if not self.queue.put(points, stop=self._sources_stop):
                return False
            self.metrics.points_in.labels(source).inc(len(points))
            return True

        return sink

    # ================================================================ scoring, events, policies
    def _score_loop(self) -> None:
        while not self._stop.is_set():
            if self.shards is not None and not self.shards.wait_idle(
                self.settings.tick_s, below=MAX_TICK_POINTS
            ):
                continue  # workers are busy: leave points in the bounded queue (429 when it fills)
            batches = self.queue.take(MAX_TICK_POINTS, self.settings.tick_s)
            if not batches:
                continue
            try:
                if self.shards is not None:
                    self.shards.submit(batches)
                else:
                    self._scored(self.scoring.step(batches))
            except Exception:  # one bad tick must not stop scoring
                log.exception("scoring tick failed")
                self.metrics.errors.labels("score").inc()

    def _scored(self, scored: Scored) -> None:
        """One scored tick (in-process or from a worker): events, the policies, then the writer."""
        with self._events_lock:
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
            if not (made.events or made.changes):
                return
            for event in made.events:
                self.metrics.anomalies.labels(event.service).inc()
                self._latency("arrival_to_event", made.emitted - event.arrival)
                if self.listeners:
                    self._notify("anomaly", event.model_dump())
            self.writer.submit(ask(self.components.policies, made))

    # ================================================================ operators and notes
    def set_paused(self, paused: bool, *, actor: str, reason: str | None = None) -> None:
        """The kill switch: journaled (it survives restarts) and applied at once."""
        self.writer.set_paused(paused, actor=actor, reason=reason)

    def settle_approval(
        self, approval_id: str, *, approve: bool, approver: str, reason: str | None
    ) -> dict[str, Any]:
        """Approve or reject a pending request; approved decisions run at once."""
        return self.writer.settle_approval(approval_id, approve=approve, approver=approver, reason=reason)

    def _state(self) -> EngineState:
        """The state the gauges show (copies: the scoring thread keeps writing the originals)."""
        supervisor, components = self.writer.supervisor, self.components
        return EngineState(
            queue_depth=self.queue.depth,
            paused=self.paused,
            approvals_pending=supervisor.pending_approvals,
            oldest_approval_ts=supervisor.oldest_pending_ts,
            threshold=self.events.threshold,
            scores=self.observations.scores.copy(),
            anomalous=self.events.health.copy(),
            bundle={
                "bundle_version": components.bundle_version,
                "detector": components.pipeline.detector,
                "detector_version": components.detector_version,
                "policy_version": components.policies.version,
            },
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
