"""One PostgreSQL connection that comes back after it breaks: the journal's, the partition
leases' and the detector states' each hold one.

Why: a psycopg connection is dead for good once its server restarts, fails over or the network
drops it; a replica holding one would keep running but never write or renew again (a zombie).
Here the statement that meets the broken connection fails as it always did (its caller handles a
failed write: the journal's transaction rolls back and nothing of it is dispatched; a renewal that
fails leaves the leases to run out), and the next use opens a new connection, its ``setup`` (the
journal's one-writer lock, a reader's read-only mode) run again.

Never in the middle of a transaction: a statement after a reconnect would run outside the
transaction its caller opened, committed alone. So the caller asks for ``connection()`` where it
may reconnect (a transaction's first statement, a statement of its own) and uses ``current``
inside its transactions.

The wait is bounded: a connection attempt gives up after ``connect_timeout`` seconds, and after a
failed one, uses fail at once for as long as that attempt took (at most ``connect_timeout``): a
batch of writes against an unreachable server waits for one attempt, not one per write, and a
replica spends at most about half its time waiting on connection attempts. A refused connection
(the server restarting) fails in a millisecond, so the first use after it is back reconnects.

A network that drops a connection without a word (a half-open TCP connection: a firewall's idle
timeout, a peer that vanished) would leave a statement waiting until the kernel gave up, about 15
minutes of retransmissions. So every connection asks for TCP keepalives (``KEEPALIVES``: a silent
peer is found dead in about a minute) and bounds unacknowledged sends (``tcp_user_timeout``), unless
its URL sets them itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Reconnecting"]

log = logging.getLogger(__name__)

KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,  # seconds of silence before the first probe
    "keepalives_interval": 10,  # between probes
    "keepalives_count": 3,  # probes unanswered before the connection is dead
    "tcp_user_timeout": 60_000,  # ms a sent statement may stay unacknowledged
}


class Reconnecting:
    """A psycopg connection (autocommit) to ``url`` for ``what`` (how logs name its user);
    ``location`` is the URL as logs and errors show it (without its password)."""

    def __init__(
        self,
        url: str,
        *,
        location: str,
        what: str,
        setup: Callable[[Any], None] | None = None,
        connect_timeout: float = 10,
        **options: Any,
    ) -> None:
        self.location = location
        self._url, self._what, self._setup = url, what, setup
        self._options = {
            "autocommit": True,
            "connect_timeout": connect_timeout,
            **_keepalives(url),
            **options,
        }
        self._closed = False
        self._lost_at: float | None = None  # monotonic time the connection was found broken
        self._attempts = 0
        self._next_try = 0.0
        self.current = self._open()

    def _open(self) -> Any:
        import psycopg

        conn = psycopg.connect(self._url, **self._options)
        if self._setup is not None:
            try:
                self._setup(conn)
            except BaseException:
                conn.close()
                raise
        return conn

    def connection(self) -> Any:
        """The connection, a new one if the last one broke (raises when that cannot be had)."""
        if not self.current.closed or self._closed:
            return self.current  # a connection closed by ``close`` stays closed: psycopg says so
        import psycopg

        now = time.monotonic()
        if self._lost_at is None:
            self._lost_at, self._attempts = now, 0
            log.warning("%s: the connection to %s broke; reconnecting", self._what, self.location)
        if now < self._next_try:
            raise psycopg.OperationalError(
                f"{self.location}: no connection for {self._what} (the last attempt failed; "
                f"the next one in {self._next_try - now:.1f} s)"
            )
        self._attempts += 1
        try:
            self.current = self._open()
        except Exception:
            self._next_try = time.monotonic() + (time.monotonic() - now)
            raise
        log.warning(
            "%s: reconnected to %s after %.1f s (%d attempt(s))",
            self._what,
            self.location,
            time.monotonic() - self._lost_at,
            self._attempts,
        )
        self._lost_at = None
        return self.current

    def close(self) -> None:
        self._closed = True
        self.current.close()


def _keepalives(url: str) -> dict[str, int]:
    """``KEEPALIVES`` but for what the URL already sets (``?keepalives_idle=60``, say)."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(url)
    return {k: v for k, v in KEEPALIVES.items() if k not in given}
