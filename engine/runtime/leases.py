"""Which replica scores which partition: leases with an expiry in the journal's PostgreSQL.

Why a lease table and not session advisory locks: an advisory lock lives as long as its session,
and a replica that is stuck (a long GC pause, SIGSTOP, a half-open network) keeps its session and
so its partitions forever; nobody else may score them and nothing bounds how long. A lease row
carries ``expires_at`` on the server's clock (no clock skew between replicas): a replica that does
not renew within ``lease_s`` loses its partitions to whoever asks next, and the replica itself stops
reading a partition once its own last renewal is ``lease_s`` old (``Leases.valid``), so two replicas
never both think they own one for longer than a renewal round trip. A clean stop releases at once.

Balance: every replica heartbeats in ``bus_members``; each aims for ``ceil(P / live replicas)``
partitions, takes expired or released ones (``FOR UPDATE SKIP LOCKED``: replicas asking at the same
moment never take the same one) and hands back its surplus when a replica joins. Each take bumps
the partition's ``epoch`` (who owned it when is in the logs).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from engine.errors import RuntimeEngineError
from engine.runtime.journal import migrate
from engine.runtime.journal_db import redacted
from engine.runtime.pgconn import Reconnecting
from engine.telemetry.columns import partition

__all__ = ["Leases", "Partitions", "Round", "owners"]

log = logging.getLogger(__name__)


class Partitions:
    """The partitions this replica owns now; called with a service, whether its partition is one.

    Shared by the bus (what to read), the detector state store (what to save) and the supervisor
    (what to verify); the bus alone changes it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.owned: frozenset[int] = frozenset()

    def of(self, service: str) -> int:
        return partition(service, self.count)

    def __call__(self, service: str) -> bool:
        return partition(service, self.count) in self.owned

    def only(self, parts: set[int] | frozenset[int]) -> Any:
        """A predicate for the services of ``parts`` alone (a handover's)."""
        count = self.count
        return lambda service: partition(service, count) in parts


@dataclass
class Round:
    """One renewal: what this replica holds now, what it just took, lost, and should hand back."""

    held: set[int] = field(default_factory=set)
    gained: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    surplus: set[int] = field(default_factory=set)
    live: int = 1


class Leases:
    """This replica's leases on the partitions of one stream (a dedicated connection; after it
    breaks, the renewal that meets the break fails and the next one reconnects:
    ``engine.runtime.pgconn``)."""

    def __init__(self, url: str, *, stream: str, partitions: int, owner: str, lease_s: float) -> None:
        import psycopg

        self.stream, self.partitions, self.owner, self.lease_s = stream, partitions, owner, lease_s
        self.location = redacted(url)
        self.held: set[int] = set()
        self._renewed = -math.inf  # monotonic time of the last successful renewal
        try:
            migrate(url)  # the tables are the journal's (its migrations, engine.runtime.journal)
            self._conn = Reconnecting(url, location=self.location, what="the partition leases")
            db = self._conn.current
            with db.transaction(), db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO bus_leases (stream, part) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    [(stream, p) for p in range(partitions)],
                )
        except psycopg.Error as exc:
            raise RuntimeEngineError(
                f"{self.location}: the partition leases cannot be opened: {' '.join(str(exc).split())}",
                hint="check the journal's PostgreSQL is reachable from this replica",
            ) from exc

    @property
    def valid(self) -> bool:
        """Whether this replica's leases can still be trusted (renewed less than ``lease_s`` ago)."""
        return time.monotonic() - self._renewed < self.lease_s

    def renew(self, *, take: bool = True) -> Round:
        """Heartbeat, renew what is held, take free partitions up to a fair share (``take``)."""
        began = time.monotonic()
        db, args = self._conn.connection(), (self.stream, self.owner)
        lease = f"{self.lease_s} seconds"
        with db.transaction():
            db.execute(
                "INSERT INTO bus_members VALUES (%s, %s, now() + %s::interval) "
                "ON CONFLICT (stream, owner) DO UPDATE SET expires_at = excluded.expires_at",
                (*args, lease),
            )
            renewed = {
                r[0]
                for r in db.execute(
                    "UPDATE bus_leases SET expires_at = now() + %s::interval "
                    "WHERE stream = %s AND owner = %s AND expires_at > now() RETURNING part",
                    (lease, *args),
                )
            }
            live = db.execute(
                "SELECT count(*) FROM bus_members WHERE stream = %s AND expires_at > now()", (self.stream,)
            ).fetchone()[0]
        out = Round(live=max(1, live))
        renewed_ok = renewed & self.held  # one the bus already dropped (a stall) is not taken back here
        share = math.ceil(self.partitions / out.live)
        gained: set[int] = set()
        if take and len(renewed_ok) < share:
            gained = {
                r[0]
                for r in db.execute(
                    "UPDATE bus_leases SET owner = %s, epoch = epoch + 1, expires_at = now() + %s::interval "
                    "WHERE (stream, part) IN (SELECT stream, part FROM bus_leases WHERE stream = %s "
                    "AND expires_at <= now() ORDER BY part LIMIT %s FOR UPDATE SKIP LOCKED) "
                    "RETURNING part",
                    (self.owner, lease, self.stream, share - len(renewed_ok)),
                )
            }
        self._renewed = began
        out.held = renewed_ok | gained
        out.gained = out.held - self.held
        out.lost = self.held - out.held
        if len(out.held) > share:
            out.surplus = set(sorted(out.held)[share:])
        self.held = out.held
        if out.gained or out.lost:
            log.info(
                "partitions of %s: took %s, lost %s; holds %s (%d live replicas)",
                self.stream,
                sorted(out.gained),
                sorted(out.lost),
                sorted(out.held),
                out.live,
            )
        return out

    def release(self, parts: set[int]) -> None:
        """Hand partitions back at once (a clean stop, or a surplus after its handover).

        They are no longer held even when the server cannot be told (its lease then runs out):
        the next renewal must not renew a partition the bus has stopped reading."""
        if parts:
            self.held -= parts
            self._release(parts)
            log.info("released partitions %s of %s", sorted(parts), self.stream)

    def _release(self, parts: set[int]) -> None:
        self._conn.connection().execute(
            "UPDATE bus_leases SET expires_at = '-infinity' "
            "WHERE stream = %s AND owner = %s AND part = ANY(%s)",
            (self.stream, self.owner, sorted(parts)),
        )

    def leave(self) -> None:
        """Release everything and leave the members (a clean stop); the connection closes."""
        try:
            self.release(set(self.held))
            self._conn.connection().execute(
                "DELETE FROM bus_members WHERE stream = %s AND owner = %s", (self.stream, self.owner)
            )
        finally:
            self._conn.close()


def owners(url: str, stream: str) -> dict[int, str]:
    """Each partition's owner now (an expired lease has none): who scores what, for operators and
    tests; an owner is ``HOST/PID/TAG`` of its replica."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as db:
        rows = db.execute(
            "SELECT part, owner FROM bus_leases WHERE stream = %s AND expires_at > now()", (stream,)
        ).fetchall()
    return {int(part): str(owner) for part, owner in rows}
