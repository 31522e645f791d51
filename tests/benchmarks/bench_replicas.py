"""Engine replicas on Redis Streams: points/s with 1, 2 and 3 replicas, and the failover time.

Each replica is ``selfheal run`` in its own process (``sources: redis``, a durable PostgreSQL
journal), all on this machine. A sample writes ``POINTS`` normal points of ``SERVICES`` services
into the partition streams at once and times until every entry is read, scored, journaled and
acknowledged (every partition's group: no lag, nothing pending). The baseline is one replica
measured in the same repeat, so the ratio is what adding replicas buys here: on a machine with
two cores, shared with Redis and PostgreSQL, mostly the coordination cost, not the scale-out a
replica per machine gives. Failover: a replica is SIGKILLed while the three run; the time until
all of its partitions are leased by the others (``lease_s`` is 5 s here).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis
from harness import Row
from test_runtime_support import NORMAL, T0, AdminServer, EngineProcess, write_rules

from engine.runtime.bus import encode, stream_key
from engine.runtime.leases import owners as lease_owners
from engine.telemetry.columns import partition
from engine.testing.services import PostgresServer, RedisServer

STREAM = "bench"
PARTS = 12
SERVICES = 120
SECONDS = 400  # POINTS = SERVICES * SECONDS * 2 metrics
LEASE_S = 5.0
ENTRY_POINTS = 500


def _load(r: redis.Redis, t0: float) -> int:
    """Write the sample's points into their partitions' streams; how many."""
    by_part: dict[int, list[tuple[float, str, str, float]]] = {}
    for k in range(SECONDS):
        for s in range(SERVICES):
            service = f"svc-{s}"
            part = by_part.setdefault(partition(service, PARTS), [])
            for metric, (mean, _) in NORMAL.items():
                part.append((t0 + k + 0.5, service, metric, mean))
    with r.pipeline(transaction=False) as pipe:
        for part, points in by_part.items():
            for i in range(0, len(points), ENTRY_POINTS):
                pipe.xadd(stream_key(STREAM, part), {"body": encode(points[i : i + ENTRY_POINTS])})
        pipe.execute()
    return sum(len(p) for p in by_part.values())


def _drained(r: redis.Redis) -> bool:
    for part in range(PARTS):
        key = stream_key(STREAM, part)
        if not r.exists(key):
            continue
        groups = r.xinfo_groups(key)
        if not groups or groups[0]["pending"] or groups[0].get("lag"):
            return False
    return True


def _owners(url: str) -> dict[int, int]:
    """Each partition's owner's pid (live leases only)."""
    return {part: int(owner.split("/")[1]) for part, owner in lease_owners(url, STREAM).items()}


def _wait(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{getattr(check, '__name__', check)} not true after {timeout:.0f} s")
        time.sleep(0.05)


def _rate(r: redis.Redis, t0: float) -> float:
    began = time.perf_counter()
    n = _load(r, t0)
    _wait(lambda: _drained(r), timeout=600)
    return n / (time.perf_counter() - began)


def _sample(folder: Path, rules: Path, redis_url: str, url: str) -> tuple[list[float], float]:
    """Points/s with 1, 2 and 3 replicas (each joining the running ones), then the failover."""
    r = redis.Redis.from_url(redis_url)
    r.flushall()
    config = (
        f"sources:\n  redis: {{url: '{redis_url}', stream: {STREAM}, partitions: {PARTS}, "
        f"lease_s: {LEASE_S}}}\n"
    )
    env = {"SELFHEAL_ENGINE_JOURNAL": url}
    replicas = [EngineProcess(folder / f"r{k}", rules, config=config, env=env) for k in range(3)]
    rates: list[float] = []
    try:
        for n, replica in enumerate(replicas, start=1):
            replica.start(timeout_s=300)
            pids = {p.proc.pid for p in replicas[:n] if p.proc is not None}
            _wait(lambda pids=pids: set(_owners(url).values()) == pids and len(_owners(url)) == PARTS, 120)
            rates.append(_rate(r, T0 + n * SECONDS))
        victim = replicas[0]
        assert victim.proc is not None
        lost = {p for p, pid in _owners(url).items() if pid == victim.proc.pid}
        live = {p.proc.pid for p in replicas[1:] if p.proc is not None}
        victim.kill9()
        killed = time.monotonic()
        _wait(lambda: all(_owners(url).get(p) in live for p in lost), timeout=120)
        return rates, time.monotonic() - killed
    finally:
        stoppers = [threading.Thread(target=p.stop) for p in replicas if p.alive()]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        r.close()


def bench_replicas(repeats: int) -> list[Row]:
    redis_server, pg = RedisServer(), PostgresServer(durable=True)
    for server in (redis_server, pg):
        if server.missing():
            print(f"bench_replicas: skipped, {server.missing()}", file=sys.stderr)
            return []
    rates: list[list[float]] = [[], [], []]
    failover: list[float] = []
    with redis_server, pg, AdminServer() as admin, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        rules = write_rules(Path(tmp) / "rules", admin.url)
        for i in range(repeats):
            got, moved = _sample(Path(tmp) / f"s{i}", rules, redis_server.url, pg.database())
            for n, rate in enumerate(got):
                rates[n].append(rate)
            failover.append(moved)
    note = f"{SERVICES * SECONDS * 2:,} points per sample, {PARTS} partitions, replicas on one 2-core machine"
    return [
        Row("bus throughput, 1 replica", "points/s", rates[0], note=note),
        Row("bus throughput, 2 replicas", "points/s", rates[1], "1 replica", rates[0]),
        Row("bus throughput, 3 replicas", "points/s", rates[2], "1 replica", rates[0]),
        Row("failover: a SIGKILLed replica's partitions leased again", "s", failover, higher_is_better=False,
            target=f"< 15 s (lease_s {LEASE_S:g})"),
    ]  # fmt: skip


BENCHMARKS = [bench_replicas]
