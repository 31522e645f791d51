"""What makes the console live: server-sent events and the score history behind the sparklines.

``Hub`` is one of the engine's listeners: the notes an operator watches (an approval requested or
settled, an action run or verified, the kill switch) wake every connected page, which then fetches
the part that changed. Listeners run on the journal writer's thread, so ``hear`` only hands the
note to each client's event loop (``call_soon_threadsafe``) and returns; a client that does not
read fast enough loses notes (its bounded queue is full), never slows the engine.

``History`` samples each service's latest score every ``every_s`` seconds from the engine's
observations (nothing is added to scoring), keeping the last hour for the sparklines.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

WATCHED = {
    "approval_requested": "approvals",
    "approval_approved": "approvals",
    "approval_rejected": "approvals",
    "approval_expired": "approvals",
    "paused": "control",
    "resumed": "control",
    "executed": "services",
    "action_failed": "services",
    "verified": "services",
    "verification_failed": "services",
    "observed": "services",
}
CLIENT_QUEUE = 100
KEEPALIVE_S = 15.0


class Hub:
    """Fan-out of engine notes to server-sent-event streams (module doc)."""

    def __init__(self) -> None:
        self._loops: dict[asyncio.AbstractEventLoop, set[asyncio.Queue[str]]] = {}
        self._lock = threading.Lock()

    @property
    def clients(self) -> int:
        return sum(len(queues) for queues in self._loops.values())

    def hear(self, kind: str, data: dict[str, Any]) -> None:
        """One hand-over per event loop (not per client): each costs the writer a wake-up."""
        topic = WATCHED.get(kind)
        if topic is None:
            return
        message = f"event: {topic}\ndata: {json.dumps({'kind': kind, **_brief(data)})}\n\n"
        with self._lock:
            loops = [(loop, tuple(queues)) for loop, queues in self._loops.items()]
        for loop, queues in loops:
            try:
                loop.call_soon_threadsafe(_offer, queues, message)
            except RuntimeError:  # its loop is closed: its clients are gone
                with self._lock:
                    self._loops.pop(loop, None)

    async def stream(self, is_disconnected: Callable[[], Any]) -> AsyncIterator[str]:
        """One client's events until it goes away (a comment line every ``KEEPALIVE_S``)."""
        loop, q = asyncio.get_running_loop(), asyncio.Queue[str](CLIENT_QUEUE)
        with self._lock:
            self._loops.setdefault(loop, set()).add(q)
        try:
            yield "retry: 1000\n\n"
            while not await is_disconnected():
                try:
                    yield await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
        finally:
            with self._lock:
                self._loops.get(loop, set()).discard(q)


def _offer(queues: tuple[asyncio.Queue[str], ...], message: str) -> None:
    for q in queues:
        if not q.full():
            q.put_nowait(message)


def _brief(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in ("decision_id", "approval_id", "service", "action", "actor") if k in data}


class History:
    """The last hour of each service's score, sampled (module doc)."""

    def __init__(
        self,
        scores: Callable[[], Mapping[str, tuple[float, float]]],
        *,
        every_s: float = 30.0,
        stopped: Callable[[], bool] = lambda: False,
    ) -> None:
        self.scores = scores
        self.stopped = stopped
        self.every_s = every_s
        self.points: dict[str, deque[tuple[float, float]]] = {}
        self._thread = threading.Thread(target=self._loop, name="selfheal-console-history", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sample(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        keep = max(2, int(3600 / self.every_s))
        for service, (score, _) in dict(self.scores()).items():
            self.points.setdefault(service, deque(maxlen=keep)).append((now, score))

    def of(self, service: str) -> list[tuple[float, float]]:
        return list(self.points.get(service, ()))

    def _loop(self) -> None:
        while not self.stopped():  # ends with its engine
            time.sleep(self.every_s)
            self.sample()
