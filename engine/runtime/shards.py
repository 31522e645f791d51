"""Scoring in worker processes, services partitioned across them (``workers: N`` in the config).

Why: online features cost several microseconds per point in pure Python, and one interpreter runs
one thread at a time; past ~50k points/s the scoring thread is the bottleneck. Each worker runs
the scoring stage (``engine.runtime.scoring``) for its services (a stable hash of the service name
picks the worker, so a service's points stay in order) with its own copy of the detector, and
returns what the stage returns. Everything that must be serial (events, health facts, policies,
safeguards, journal, actions) stays in the engine process.

Each worker keeps the detector states of its services (``engine.runtime.states``): it restores
them at start from the engine's state store, snapshots them every ``state_snapshot_s`` and at a
clean stop, exactly as the in-process stage does.

Workers are started with ``spawn`` (no fork of a threaded process). A worker that dies takes its
services' open buckets since the last snapshot with it; the engine logs it, counts it, and
reports not ready.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from engine.errors import RuntimeEngineError
from engine.runtime.scoring import RowSigner, Scored, ScoringStage
from engine.runtime.states import state_store
from engine.telemetry.columns import PointColumns, partition
from engine.telemetry.points import Point, Points

log = logging.getLogger(__name__)

Batch = tuple[float, Points]
OnScored = Callable[[Scored], None]


@dataclass(frozen=True)
class WorkerShare:
    """A worker's share of the services (picklable, unlike a closure)."""

    shard: int
    shards: int

    def __call__(self, service: str) -> bool:
        return partition(service, self.shards) == self.shard


def _worker(
    conn: Any, pipeline_bytes: bytes, states: StatesAt | None, owns: WorkerShare, signer: RowSigner | None
) -> None:
    """Worker process: the scoring stage (and the diagnosis' signatures) on the points of its
    services, tick by tick."""
    detector = pickle.loads(pipeline_bytes)  # the engine pickled its own (verified) pipeline
    store = state_store(states.settings, states.path, detector, owns) if states else None
    snapshot_s = states.settings.state_snapshot_s if states else None
    stage = ScoringStage(detector, store=store, snapshot_s=snapshot_s or 0, signer=signer)
    gc.collect()
    gc.freeze()  # a dedicated process: keep full collections off the loaded pipeline (see server.py)
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the engine died: keep the states of the last snapshot, not a later one
            return
        if message is None:
            stage.close()  # a clean stop: the last snapshot
            return
        if type(message) is tuple:  # ("forget", services): idle services' state goes (no reply)
            stage.forget(message[1])
            continue
        conn.send(stage.step(message))


class StatesAt(NamedTuple):
    """Where the workers keep their detector states: the engine's settings and state file."""

    settings: Any
    path: Path | str


class ShardPool:
    """N scoring processes; ``submit`` partitions a tick's batches, ``on_scored`` gets the results."""

    def __init__(
        self,
        pipeline: Any,
        workers: int,
        on_scored: OnScored,
        states: StatesAt | None = None,
        signer: RowSigner | None = None,
        *,
        start_timeout_s: float = 120.0,
    ) -> None:
        ctx = mp.get_context("spawn")
        blob = pickle.dumps(pipeline, protocol=pickle.HIGHEST_PROTOCOL)
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        self._shard_of: dict[str, int] = {}
        self._outstanding = 0
        self._cond = threading.Condition()
        self._on_scored = on_scored
        self._closing = False
        self.failed = False
        for i in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker,
                args=(child, blob, states, WorkerShare(i, workers), signer),  # a copy each
                name=f"selfheal-shard-{i}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for i, conn in enumerate(self._conns):
            if not conn.poll(start_timeout_s) or conn.recv() != "ready":
                self.close()
                raise RuntimeEngineError(f"scoring worker {i} did not start", hint="see the engine's log")
        self._readers = [
            threading.Thread(target=self._read, args=(i,), name=f"selfheal-shard-read-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._readers:
            thread.start()

    @property
    def alive(self) -> int:
        """How many worker processes are running."""
        return sum(1 for proc in self._procs if proc.is_alive())

    @property
    def outstanding(self) -> int:
        """Points sent to workers and not yet scored (counted as queued for draining)."""
        return self._outstanding

    def submit(self, batches: Sequence[Batch]) -> None:
        n = len(self._conns)
        parts: list[list[Batch]] = [[] for _ in range(n)]
        shard_of = self._shard_of
        total = 0
        for arrival, points in batches:
            total += len(points)
            if isinstance(points, PointColumns):  # vectorised; the workers iterate the rows
                for i, columns in enumerate(points.split(shard_of, n)):
                    if columns is not None:
                        parts[i].append((arrival, columns))
                continue
            split: list[list[Point]] = [[] for _ in range(n)]
            for point in points:
                shard = shard_of.get(point[1])
                if shard is None:
                    shard = shard_of[point[1]] = partition(point[1], n)
                split[shard].append(point)
            for i, pts in enumerate(split):
                if pts:
                    parts[i].append((arrival, pts))
        with self._cond:
            self._outstanding += total
        for i, part in enumerate(parts):
            if part:
                self._conns[i].send(part)

    def forget(self, services: Sequence[str]) -> None:
        """Tell each worker to drop the state of its services among ``services`` (idle ones)."""
        parts: dict[int, list[str]] = {}
        for service in services:
            shard = self._shard_of.pop(service, None)
            if shard is not None:  # else no point of it was ever sent: no worker holds its state
                parts.setdefault(shard, []).append(service)
        for shard, names in parts.items():
            self._conns[shard].send(("forget", names))

    def _read(self, i: int) -> None:
        conn = self._conns[i]
        while True:
            try:
                scored = conn.recv()
            except (EOFError, OSError):
                if not self._closing:
                    self.failed = True
                    log.critical("scoring worker %d died; its services are no longer scored", i)
                return
            try:
                self._on_scored(scored)
            except Exception:
                log.exception("handling scores from worker %d failed", i)
            finally:
                with self._cond:
                    self._outstanding -= scored.points
                    self._cond.notify_all()

    def wait_idle(self, timeout: float, below: int = 1) -> bool:
        """Wait until fewer than ``below`` points are in the workers (back-pressure, draining)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._outstanding >= below and not self.failed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        self._closing = True
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=30)  # its last snapshot first
            if proc.is_alive():
                proc.kill()
        for thread in getattr(self, "_readers", []):
            thread.join(timeout=5)
        for conn in self._conns:
            conn.close()
