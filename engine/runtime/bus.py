"""Telemetry through Redis Streams, shared by engine replicas (``sources: redis: {...}``).

The streams: ``STREAM:0`` … ``STREAM:P-1``, one per partition; a service's points go to
``partition(service, P)`` (crc32, stable across processes and machines), so one replica sees all of
a service's points, in order. An entry's ``body`` field holds NDJSON points, one or many, parsed
by the engine's one point parser (a malformed line is refused alone, counted and dead-lettered
like any source's; an entry without a body is refused whole). Writers that cannot hash
(a collector's stock Redis output) write to ``STREAM:in``; whichever replica reads an entry there
moves its points to their partitions (the moves and the acknowledgement in one MULTI).

Each replica leases partitions (``engine.runtime.leases``) and reads its partitions' streams in the
consumer group ``group``. Delivery is at least once:

- an entry is acknowledged (XACK) only when its points were scored and the events they caused
  were committed to the journal (the scoring stage's count of points and the journal writer's
  count of committed ticks pass it), so an acknowledged point is never unscored;
- a replica that takes a partition first reads its states from the shared store (``adopt``),
  settles what the last owner left in the journal for its services (``recovery.settle``), then
  claims the entries the last owner read but never acknowledged (XAUTOCLAIM) and scores them,
  removes the consumers of dead replicas (idle, nothing pending) from the partition's group and
  the inbox's, then reads on. A re-delivered point the restored state already holds is a late point to the
  detector (its bucket closed): it moves nothing;
- a replica that hands a partition back (a replica joined) stops reading it, waits until what it
  read is journaled and acknowledged and no action of its services is in flight, saves the
  states, then releases the lease;
- a replica that loses a lease (it stalled past ``lease_s``) drops the partition without saving.

The HTTP push endpoint writes into the streams (``Bus.publish``), so every replica accepts pushes
and the partition's owner scores them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from engine.records import new_id
from engine.runtime.config import EngineSettings, RedisSource
from engine.runtime.intake import Door, Intake
from engine.runtime.journal import ExecutionStatus, Journal
from engine.runtime.journal_db import redacted
from engine.runtime.leases import Leases, Partitions
from engine.runtime.metrics import EngineMetrics
from engine.runtime.scoring import ScoringStage
from engine.runtime.sources import IngestQueue
from engine.runtime.writer import Writer
from engine.telemetry.points import Point, Rejection, parse_lines

__all__ = ["Bus", "encode", "stream_key"]

log = logging.getLogger(__name__)

BODY = b"body"
INBOX = "in"
READ_BLOCK_MS = 100

# Delete a stream group's consumers (but ARGV[2]) idle for ARGV[3] ms with nothing pending; returns
# how many. A script, so no entry is delivered to one between the check and the delete (deleting a
# consumer deletes its pending entries: they would never be delivered again).
_DELETE_IDLE_CONSUMERS = """
local deleted = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #consumer, 2 do f[consumer[i]] = consumer[i + 1] end
  if f['name'] ~= ARGV[2] and f['pending'] == 0 and f['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    deleted = deleted + 1
  end
end
return deleted
"""


def stream_key(stream: str, part: int | str) -> str:
    """The Redis key of a partition's stream (``in``: the inbox writers that cannot hash use)."""
    return f"{stream}:{part}"


def encode(points: Sequence[Point]) -> str:
    """Points as an entry's NDJSON body."""
    dumps = json.dumps
    return "\n".join(dumps({"ts": t, "service": s, "metric": m, "value": v}) for t, s, m, v in points)


class Replica(Protocol):
    """What the bus uses of the engine (``engine.runtime.process.Engine``, which builds the bus)."""

    settings: EngineSettings
    queue: IngestQueue
    intake: Intake
    door: Door
    scoring: ScoringStage
    writer: Writer
    journal: Journal
    metrics: EngineMetrics
    points_scored: int
    _events_lock: threading.Lock

    def _notify(self, kind: str, data: dict[str, Any]) -> None: ...


class Bus:
    """One replica's side of the streams: ``publish`` (pushes), the reading thread, handovers."""

    def __init__(self, engine: Replica, config: RedisSource, journal_url: str) -> None:
        import redis

        self.engine, self.config = engine, config
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{new_id('r')[-6:]}"
        self.parts = Partitions(config.partitions)
        self.redis = redis.Redis.from_url(config.url, socket_timeout=10, socket_connect_timeout=5)
        self._delete_idle = self.redis.register_script(_DELETE_IDLE_CONSUMERS)
        self.leases = Leases(
            journal_url,
            stream=config.stream,
            partitions=config.partitions,
            owner=self.owner,
            lease_s=config.lease_s,
        )
        self.source = f"redis:{config.stream}"
        self._sink = engine.door.sink(self.source)
        self._reading: set[int] = set()  # partitions read now (owned and not being handed back)
        self._handing: dict[int, int] = {}  # partition -> queue position its last point reached
        self._acks: deque[tuple[int, str, bytes]] = deque()  # (queue position, stream key, entry id)
        self._checkpoints: deque[tuple[int, int]] = deque()  # (points scored, ticks submitted)
        self._journaled = 0  # queue position up to which points are scored and journaled
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # The supervisor and the detector state store act on this replica's services alone.
        engine.writer.supervisor.owns = self.parts
        if engine.scoring.store is not None:
            engine.scoring.store.owns = self.parts  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ writing
    def publish(self, points: Sequence[Point]) -> int | None:
        """Append ``points`` to their partitions' streams, all or none (MULTI); None when Redis
        cannot be reached (nothing was written: the caller answers 429, a retry is safe)."""
        import redis

        by_part: dict[int, list[Point]] = {}
        of = self.parts.of
        for point in points:
            by_part.setdefault(of(point[1]), []).append(point)
        if not by_part:
            return 0
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                for part, pts in by_part.items():
                    self._xadd(pipe, part, pts)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("publishing %d points to %s failed: %s", len(points), redacted(self.config.url), exc)
            return None
        return len(points)

    def _xadd(self, pipe: Any, part: int, points: Sequence[Point]) -> None:
        key = stream_key(self.config.stream, part)
        pipe.xadd(key, {BODY: encode(points)}, maxlen=self.config.max_len, approximate=True)

    # ------------------------------------------------------------------ the reading thread
    def start(self, stop: threading.Event) -> None:
        """Read until ``stop`` (the engine's sources stop); ``close`` finishes after the drain."""
        self._ensure_group(stream_key(self.config.stream, INBOX))

        def run() -> None:
            self._run(stop)

        self._thread = threading.Thread(target=run, name="selfheal-bus", daemon=True)
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        import redis

        renew_every = self.config.lease_s / 4
        next_round = 0.0
        while not (stop.is_set() or self._stop.is_set()):
            try:
                now = time.monotonic()
                if now >= next_round:
                    next_round = now + renew_every
                    self._round()
                if self._reading and not self.leases.valid:
                    log.error(
                        "the partition leases were not renewed for %.0f s: dropping them", self.config.lease_s
                    )
                    self._drop(set(self.parts.owned))
                self._read(stop)
                self._settle()
            except (redis.RedisError, OSError) as exc:
                log.warning("the telemetry bus failed (%s); retrying in 1 s", exc)
                stop.wait(1.0)
            except Exception:
                log.exception("the telemetry bus failed; retrying in 1 s")
                self.engine.metrics.error("bus")
                stop.wait(1.0)

    def _round(self) -> None:
        """Renew the leases; take over what was gained, drop what was lost, hand back a surplus."""
        try:
            got = self.leases.renew(take=not self._handing)
        except Exception as exc:  # the journal's server is away: the leases run out on their own
            log.warning("renewing the partition leases failed: %s", exc)
            return
        if got.lost:
            self._drop(got.lost & set(self.parts.owned))
        gained = sorted(got.gained)
        for n, part in enumerate(gained):
            try:
                self._adopt(part)
            except Exception:
                # Let go of the ones not taken over (their leases run out) so a later round takes
                # them again: held but never adopted, they would be renewed and never read.
                with contextlib.suppress(Exception):
                    self._drop(set(gained[n:]))
                raise
        for part in got.surplus - set(self._handing):
            self._reading.discard(part)
            self._handing[part] = self.engine.queue.accepted_total
        self._claim_inbox()

    def _adopt(self, part: int) -> None:
        """Take a partition over: states, what its last owner left, then its unacknowledged entries."""
        from engine.runtime.recovery import Recovered, settle

        key = stream_key(self.config.stream, part)
        self._ensure_group(key)
        only = self.parts.only({part})
        self.parts.owned = self.parts.owned | {part}
        restored = self.engine.scoring.adopt(only)
        writer = self.engine.writer
        left = Recovered()
        settle(
            writer.journal,
            writer.decider,
            writer.executor,
            left,
            stale_decision_s=self.engine.settings.stale_decision_s,
            now=time.time(),
            owns=only,
        )
        for execution in left.executions:
            writer.executor.dispatch(execution)
        for kind, data in left.notes:
            self.engine._notify(kind, data)
        claimed = 0
        start: Any = "0-0"
        while True:
            reply = self.redis.xautoclaim(
                key, self.config.group, self.owner, 0, start, count=self.config.read_count
            )
            start, entries = reply[0], reply[1]
            entries = [(eid, fields) for eid, fields in entries if fields is not None]  # trimmed: gone
            claimed += len(entries)
            self._take({key: (part, entries)})
            if start in (b"0-0", "0-0"):
                break
        self._reading.add(part)
        gone = self._delete_idle_consumers(key) + self._delete_idle_consumers(
            stream_key(self.config.stream, INBOX)
        )
        log.info(
            "took partition %d of %s: %d series' states restored, %d unacknowledged entries claimed, "
            "%d idle consumers removed, %s",
            part,
            self.config.stream,
            restored,
            claimed,
            gone,
            {k: v for k, v in left.counts.items() if v} or "nothing left to settle",
        )

    def _drop(self, parts: set[int]) -> None:
        """A lost lease: stop reading, forget its acknowledgements and states (not saved: the
        partition may be someone else's now)."""
        if not parts:
            return
        keys = {stream_key(self.config.stream, p) for p in parts}
        self._reading -= parts
        for part in parts:
            self._handing.pop(part, None)
        self.parts.owned = self.parts.owned - parts
        self._acks = deque(a for a in self._acks if a[1] not in keys)
        self.engine.scoring.release(self.parts.only(parts), save=False)
        self.leases.release(parts & self.leases.held)

    def _read(self, stop: threading.Event) -> None:
        streams = {stream_key(self.config.stream, p): ">" for p in sorted(self._reading)}
        streams[stream_key(self.config.stream, INBOX)] = ">"
        reply = self.redis.xreadgroup(
            self.config.group, self.owner, streams, count=self.config.read_count, block=READ_BLOCK_MS
        )
        inbox = stream_key(self.config.stream, INBOX).encode()
        got: dict[str, tuple[int, list[Any]]] = {}
        for name, entries in reply or []:
            if name == inbox:
                self._route(name.decode(), entries)
                continue
            key = name.decode()
            part = int(key.rsplit(":", 1)[1])
            if part in self._reading:
                got[key] = (part, entries)
        if got and not stop.is_set():
            self._take(got)

    def _take(self, got: dict[str, tuple[int, list[Any]]]) -> None:
        """Parse entries, move misrouted points to their partitions, hand the rest to the engine
        as one batch, and remember each entry for its acknowledgement."""
        mine: list[Point] = []
        refused: list[Rejection] = []
        misrouted: dict[int, list[Point]] = {}
        ids: list[tuple[str, bytes]] = []
        for key, (part, entries) in got.items():
            for entry_id, fields in entries:
                points, rejections = self._parse(fields)
                refused += rejections
                for point in points:
                    p = self.parts.of(point[1])
                    if p == part:
                        mine.append(point)
                    else:
                        misrouted.setdefault(p, []).append(point)
                ids.append((key, entry_id))
        if not ids:
            return
        if misrouted:
            with self.redis.pipeline(transaction=True) as pipe:
                for p, pts in misrouted.items():
                    self._xadd(pipe, p, pts)
                pipe.execute()
        if not self._sink(mine, refused):
            return  # the engine stops: unacknowledged, they go to the next owner
        position = self.engine.queue.accepted_total
        self._acks.extend((position, key, entry_id) for key, entry_id in ids)

    def _parse(self, fields: dict[bytes, bytes]) -> tuple[list[Point], list[Rejection]]:
        body = fields.get(BODY)
        if body is None:
            raw = {k.decode(errors="replace"): v.decode(errors="replace")[:200] for k, v in fields.items()}
            return [], [
                Rejection(0, "body", "missing", "a stream entry needs a `body` field of NDJSON points", raw)
            ]
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return [], [Rejection(0, "body", "encoding", f"the body is not UTF-8 ({exc})", body[:200].hex())]
        return parse_lines(text.splitlines(), self.engine.intake.names)

    def _route(self, key: str, entries: list[Any]) -> None:
        """Inbox entries: their points to their partitions and the acknowledgement, in one MULTI."""
        by_part: dict[int, list[Point]] = {}
        refused: list[Rejection] = []
        for _, fields in entries:
            if fields is None:
                continue
            points, rejections = self._parse(fields)
            refused += rejections
            for point in points:
                by_part.setdefault(self.parts.of(point[1]), []).append(point)
        with self.redis.pipeline(transaction=True) as pipe:
            for part, pts in by_part.items():
                self._xadd(pipe, part, pts)
            pipe.xack(key, self.config.group, *[entry_id for entry_id, _ in entries])
            pipe.execute()
        if refused:
            self._sink([], refused)

    def _claim_inbox(self) -> None:
        """Route the inbox entries a dead replica read and never routed."""
        key = stream_key(self.config.stream, INBOX)
        idle_ms = int(self.config.lease_s * 1000)
        reply = self.redis.xautoclaim(
            key, self.config.group, self.owner, idle_ms, "0-0", count=self.config.read_count
        )
        if reply[1]:
            self._route(key, reply[1])

    def _delete_idle_consumers(self, key: str) -> int:
        """Remove the consumers of dead replicas from ``key``'s group: those idle for ``lease_s``
        (a live owner reads its partitions, every replica the inbox, several times a second) with
        nothing pending (a taken partition's were just claimed). Without this every replica that
        ever ran stays listed in the group for good. A live one removed by mistake costs nothing:
        its next read adds it again."""
        idle_ms = int(self.config.lease_s * 1000)
        return int(self._delete_idle(keys=[key], args=[self.config.group, self.owner, idle_ms]))

    def _ensure_group(self, key: str) -> None:
        import redis

        try:
            self.redis.xgroup_create(key, self.config.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ------------------------------------------------------------------ acknowledgements
    def _settle(self) -> None:
        """Acknowledge what is scored and journaled; finish the handovers that are done."""
        engine = self.engine
        writer = engine.writer
        with engine._events_lock:  # the tick that counted the points was handed over in this lock
            mark = (engine.points_scored, writer.submitted)
        if not self._checkpoints or self._checkpoints[-1] != mark:
            self._checkpoints.append(mark)
        while self._checkpoints and writer.written >= self._checkpoints[0][1]:
            self._journaled = max(self._journaled, self._checkpoints.popleft()[0])
        self._ack(self._journaled)
        for part, position in list(self._handing.items()):
            if position <= self._journaled and not self._in_flight(part):
                self._hand_back(part)

    def _ack(self, upto: int) -> None:
        ready: dict[str, list[bytes]] = {}
        while self._acks and self._acks[0][0] <= upto:
            _, key, entry_id = self._acks.popleft()
            ready.setdefault(key, []).append(entry_id)
        if ready:
            with self.redis.pipeline(transaction=False) as pipe:
                for key, ids in ready.items():
                    pipe.xack(key, self.config.group, *ids)
                pipe.execute()

    def _in_flight(self, part: int) -> bool:
        only = self.parts.only({part})
        rows = self.engine.journal.executions_with_status(ExecutionStatus.IN_FLIGHT)
        return any(only(row["target"]) for row in rows)

    def _hand_back(self, part: int) -> None:
        """A surplus partition, read, journaled and acknowledged: save its states, release it."""
        key = stream_key(self.config.stream, part)
        if any(a[1] == key for a in self._acks):
            return
        saved = self.engine.scoring.release(self.parts.only({part}), save=True)
        self.parts.owned = self.parts.owned - {part}
        del self._handing[part]
        self.leases.release({part})
        log.info("handed partition %d back (%d series' states saved)", part, saved)

    def close(self, *, journaled: bool) -> None:
        """After the engine's drain and the writer's stop: acknowledge what was scored (and, the
        writer stopped, ``journaled``), release the leases."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self._ack(self.engine.points_scored if journaled else self._journaled)
        try:
            self.leases.leave()
        except Exception as exc:
            log.warning(
                "releasing the partition leases failed (they expire in %.0f s): %s", self.config.lease_s, exc
            )
        self.redis.close()
