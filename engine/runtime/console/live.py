"""What makes the console live, and why it costs the engine next to nothing: one producer, one
shared snapshot, many readers.

The engine pays one thing for the console: ``Live.hear``, one of its listeners, which runs on the
journal writer's thread (and the supervisor's, and an operator's request's) for every note. It only
bumps the version of the topic the note is about (approvals, services, control) and sets an event:
no JSON, no I/O, nothing per client. Everything else runs on the console's own thread
(``selfheal-console-live``):

- at most every ``spacing_s`` it publishes a ``Snapshot``: a version, each topic's version, and
  the server-sent-event message, encoded once. Each event loop serving streams gets one wake-up;
  every stream on it then writes the same bytes. A stream that falls behind skips to the latest
  version (nothing queues per client), so a burst of notes costs each client one message. A
  change of approvals or of the kill switch goes out at once; the services table, which changes
  with every action, at most every ``services_s`` (each version costs its viewers a fetch);
- every ``poll_s`` it samples each service's score into ``History``, on the data's clock (a
  simulated platform's in a chaos run), for the sparklines.

Pages do not query per client either: the services table and the approvals queue are ``Views``,
built once per version of their topic (through the console's own read-only journal connection,
never the engine's) and shared by every request for that version.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

WATCHED = {
    "approval_requested": "approvals",
    "approval_approved": "approvals",
    "approval_rejected": "approvals",
    "approval_expired": "approvals",
    "paused": "control",
    "resumed": "control",
    "mode_changed": "control",
    "executed": "services",
    "action_failed": "services",
    "verified": "services",
    "verification_failed": "services",
    "observed": "services",
}
TOPICS = ("approvals", "services", "control")
KEEPALIVE_S = 15.0
HOUR_S = 3600.0


@dataclass(frozen=True)
class Snapshot:
    """What every stream sends next: built once per change, the same bytes for every client."""

    version: int
    topics: dict[str, int]
    message: bytes

    @classmethod
    def of(cls, epoch: str, version: int, topics: Mapping[str, int]) -> Snapshot:
        """``epoch`` names this run of the engine: a page from before a restart reloads."""
        body = {"epoch": epoch, "version": version, "topics": dict(topics)}
        data = json.dumps(body, separators=(",", ":"))
        return cls(version, dict(topics), f"id: {version}\nevent: change\ndata: {data}\n\n".encode())


@dataclass
class _Gate:
    """One per event loop: the streams on it wait on ``opened``; a publish swaps it for a new one."""

    opened: asyncio.Event = field(default_factory=asyncio.Event)
    streams: int = 0


class History:
    """The last hour of each service's score, a point every ``every_s`` of the data's clock.

    ``scores`` and ``clock`` are the engine's observations (the latest score of each service and
    the time of the row it scored): sampling reads them and adds nothing to scoring. The time is
    the data's, not the wall's, so a chaos run's platform, faster than the wall, fills its hour.
    """

    def __init__(
        self,
        scores: Callable[[], Mapping[str, tuple[float, float]]],
        clock: Callable[[], Mapping[str, float]],
        *,
        every_s: float = 30.0,
    ) -> None:
        self.scores, self.clock, self.every_s = scores, clock, every_s
        self.points: dict[str, deque[tuple[float, float]]] = {}

    def sample(self) -> bool:
        """Add each service's latest score if its clock moved ``every_s`` on; True if any was added."""
        scores, clock = dict(self.scores()), dict(self.clock())
        added = False
        for service, (score, _) in scores.items():
            ts = clock.get(service)
            if ts is None:
                continue
            ts = float(ts)
            points = self.points.setdefault(service, deque())
            if points and ts < points[-1][0]:
                points.clear()  # the clock went back: another run's data
            elif points and ts < points[-1][0] + self.every_s:
                continue
            points.append((ts, float(score)))
            while points[0][0] < ts - HOUR_S:
                points.popleft()
            added = True
        for service in set(self.points) - set(scores):  # forgotten by the engine
            del self.points[service]
        return added

    def of(self, service: str) -> list[tuple[float, float]]:
        return list(self.points.get(service, ()))

    def around(self, service: str, ts: float, *, span_s: float = 900.0) -> list[tuple[float, float]]:
        """The points within ``span_s`` either side of ``ts`` (an event's time)."""
        return [p for p in self.of(service) if ts - span_s <= p[0] <= ts + span_s]


class Live:
    """The console's producer thread, its topics' versions and the streams (module doc)."""

    def __init__(
        self,
        history: History,
        *,
        stopped: Callable[[], bool],
        spacing_s: float = 0.25,
        services_s: float = 5.0,
        poll_s: float = 1.0,
        on_stop: Callable[[], None] = lambda: None,
    ) -> None:
        self.history, self.stopped, self.on_stop = history, stopped, on_stop
        self.spacing_s, self.services_s, self.poll_s = spacing_s, services_s, poll_s
        self._services_due = 0.0  # monotonic time before which the services topic is held back
        self.epoch = secrets.token_hex(4)
        self.versions = dict.fromkeys(TOPICS, 0)
        self.snapshot = Snapshot.of(self.epoch, 0, self.versions)
        self._lock = threading.Lock()  # the console's own: versions and gates, never the engine's
        self._gates: dict[asyncio.AbstractEventLoop, _Gate] = {}
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="selfheal-console-live", daemon=True)

    @property
    def clients(self) -> int:
        return sum(g.streams for g in self._gates.values())

    def start(self) -> None:
        self.history.sample()
        self._thread.start()

    # ------------------------------------------------------------ the engine's side (its threads)
    def hear(self, kind: str, data: dict[str, Any]) -> None:
        """An engine listener: mark the topic changed and wake the producer; nothing else."""
        topic = WATCHED.get(kind)
        if topic is not None:
            self.touch(topic)

    def touch(self, topic: str) -> None:
        with self._lock:
            self.versions[topic] += 1
        self._wake.set()

    # ------------------------------------------------------------ the producer (its own thread)
    def _loop(self) -> None:
        sampled = time.monotonic()
        try:
            while not self.stopped():  # ends with its engine
                due = self._services_due - time.monotonic()
                pending = self.versions["services"] != self.snapshot.topics["services"]
                self._wake.wait(min(self.poll_s, max(0.0, due)) if pending else self.poll_s)
                self._wake.clear()
                if time.monotonic() - sampled >= self.poll_s:
                    sampled = time.monotonic()
                    if self.history.sample():
                        self.touch("services")  # new points on the sparklines
                if self.publish():
                    time.sleep(self.spacing_s)  # notes in the meantime share the next snapshot
        finally:
            self.on_stop()

    def publish(self, *, now: float | None = None) -> bool:
        """A new snapshot if a topic changed since the last, and one wake-up per event loop.

        Approvals and the kill switch go out at once; the services table, which changes with
        every action and every sample, at most every ``services_s``: each of its versions costs
        every client on the services page a fetch of the table."""
        now = time.monotonic() if now is None else now
        with self._lock:
            topics, shown = dict(self.versions), self.snapshot.topics
            if now < self._services_due:
                topics["services"] = shown["services"]
            if topics == shown:
                return False
            if topics["services"] != shown["services"]:
                self._services_due = now + self.services_s
            self.snapshot = Snapshot.of(self.epoch, self.snapshot.version + 1, topics)
            loops = list(self._gates.items())
        for loop, gate in loops:
            try:
                loop.call_soon_threadsafe(_open, gate)
            except RuntimeError:  # its loop is closed: its streams are gone
                with self._lock:
                    self._gates.pop(loop, None)
        return True

    # ------------------------------------------------------------ the streams (the server's loop)
    async def stream(self, is_disconnected: Callable[[], Any]) -> AsyncIterator[bytes]:
        """One client's messages: the latest snapshot at once, then each newer one, until it goes
        away (a comment line every ``KEEPALIVE_S`` keeps proxies from closing a quiet stream)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            gate = self._gates.setdefault(loop, _Gate())
            gate.streams += 1
        sent = -1
        try:
            yield b"retry: 1000\n\n"
            while not await is_disconnected():
                snapshot = self.snapshot
                if snapshot.version != sent:
                    sent = snapshot.version
                    yield snapshot.message
                    continue
                try:
                    await asyncio.wait_for(gate.opened.wait(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
        finally:
            with self._lock:
                gate.streams -= 1


def _open(gate: _Gate) -> None:
    """On the gate's loop: wake every stream waiting on it; later waits wait for the next publish."""
    opened, gate.opened = gate.opened, asyncio.Event()
    opened.set()


class Views:
    """What pages show, built once per version of its topic and shared by every request."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self._built: dict[str, tuple[int, Any]] = {}
        self._lock = threading.Lock()  # one build at a time; the others take its result

    def get(self, topic: str, build: Callable[[], T]) -> T:
        with self._lock:
            version = self.live.versions[topic]  # read first: a change during the build rebuilds
            built = self._built.get(topic)
            if built is not None and built[0] == version:
                return built[1]  # type: ignore[no-any-return]
            value = build()
            self._built[topic] = (version, value)
            return value
