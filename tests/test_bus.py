"""The Redis Streams telemetry source (``sources: redis``) and the partition leases, on real
servers: a redis-server and a PostgreSQL started for the test session (``engine.testing.services``).

The engine's end-to-end flows of ``test_runtime`` run again with every push going through the
streams; then what only the bus does: acknowledgement after journaling, malformed entries refused
alone, the inbox for writers that cannot hash, and leases that move when a replica stops renewing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import test_runtime
from test_runtime_support import T0, fit_pipeline, ndjson, points, wait_for

from engine.errors import SpecError
from engine.runtime.bus import encode, stream_key
from engine.runtime.config import load_settings
from engine.runtime.leases import Leases, owners
from engine.telemetry.columns import partition

pytestmark = pytest.mark.slow

STREAM = "t:telemetry"
PARTS = 4


def bus_settings(redis_url: str, **more: Any) -> dict[str, Any]:
    return {"url": redis_url, "stream": STREAM, "partitions": PARTS, "lease_s": 2.0, **more}


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return fit_pipeline()


@pytest.fixture
def harness(
    tmp_path: Path, pipeline: Any, postgres_url: str, redis_url: str
) -> Iterator[test_runtime.Harness]:
    with test_runtime.running_harness(
        tmp_path,
        pipeline,
        journal=postgres_url,
        state_snapshot_s=0,
        sources={"redis": bus_settings(redis_url)},
    ) as harness:
        yield harness


def pending(redis_url: str, stream: str = STREAM, parts: int = PARTS) -> int:
    """Entries read and not acknowledged, over every partition stream."""
    with redis.Redis.from_url(redis_url) as r:
        return sum(
            r.xpending(stream_key(stream, p), "selfheal")["pending"]
            for p in range(parts)
            if r.exists(stream_key(stream, p))
        )


def test_config_refuses_a_bus_without_a_shared_journal(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"sources.redis needs `journal: postgresql://"):
        load_settings(overrides={"sources": {"redis": {"url": "redis://127.0.0.1:1/0"}}}, environ={})
    with pytest.raises(SpecError, match="redis://HOST:PORT/DB"):
        load_settings(
            overrides={"journal": "postgresql://u@h/db", "sources": {"redis": {"url": "http://x"}}},
            environ={},
        )
    with pytest.raises(SpecError, match="workers: 0"):
        load_settings(
            overrides={
                "journal": "postgresql://u@h/db",
                "workers": 2,
                "sources": {"redis": {"url": "redis://127.0.0.1:1/0"}},
            },
            environ={},
        )


@pytest.mark.parametrize(
    "name",
    [
        "test_pushed_points_lead_to_a_verified_action_in_the_journal",
        "test_high_risk_action_waits_for_an_authenticated_approver",
    ],
)
def test_the_engine_runs_on_the_bus(name: str, harness: test_runtime.Harness, redis_url: str) -> None:
    getattr(test_runtime, name)(harness)
    with redis.Redis.from_url(redis_url) as r:
        assert sum(r.xlen(stream_key(STREAM, p)) for p in range(PARTS) if r.exists(stream_key(STREAM, p)))
    wait_for(lambda: pending(redis_url) == 0)  # every entry read was scored, journaled, acknowledged


def test_malformed_entries_are_refused_alone(harness: test_runtime.Harness, redis_url: str) -> None:
    engine = harness.engine
    good = points("gateway", T0, 3)
    part = partition("gateway", PARTS)
    with redis.Redis.from_url(redis_url) as r:
        key = stream_key(STREAM, part)
        r.xadd(key, {"nobody": "here"})
        r.xadd(key, {"body": b"\xff\xfe not utf-8"})
        r.xadd(
            key,
            {
                "body": '{"ts": 1, "service": "gateway"}\nnot json\n'
                + encode([tuple(p.values()) for p in good])
            },
        )
    wait_for(lambda: engine.points_scored >= len(good))
    wait_for(lambda: pending(redis_url) == 0)
    metrics = httpx.get(f"{harness.url}/metrics").text
    rejected = {
        line.split("field=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("selfheal_points_rejected_total") and STREAM in line
    }
    assert rejected == {"body": 2.0, "metric": 1.0, "line": 1.0}  # no body, not UTF-8; no metric; not JSON
    assert engine.healthy and engine.ready.is_set()


def test_a_failed_scoring_tick_is_dead_lettered_and_acknowledged(
    tmp_path: Path, pipeline: Any, postgres_url: str, redis_url: str
) -> None:
    """Every scoring tick fails: the score log's disk is full (``/dev/full``). The ticks' points
    are dead-lettered and counted, and their entries acknowledged; without that, the points of a
    failed tick were never counted as done and held back every later acknowledgement."""
    with test_runtime.running_harness(
        tmp_path,
        pipeline,
        journal=postgres_url,
        scores_file="/dev/full",
        sources={"redis": bus_settings(redis_url)},
    ) as harness:
        engine = harness.engine
        sent = sum(len(ndjson(points(s, T0, 5)).splitlines()) for s in ("gateway", "vector-db"))
        with redis.Redis.from_url(redis_url) as r:
            for service in ("gateway", "vector-db"):
                r.xadd(
                    stream_key(STREAM, partition(service, PARTS)), {"body": ndjson(points(service, T0, 5))}
                )
        wait_for(lambda: engine.points_scored >= sent)
        wait_for(lambda: pending(redis_url) == 0)
        metrics = httpx.get(f"{harness.url}/metrics").text
        assert f'selfheal_points_rejected_total{{field="tick",source="scoring"}} {float(sent)}' in metrics
        assert engine.rows_scored == 0 and engine.healthy
    letters = [json.loads(line) for line in (tmp_path / "journals" / "dead-letter.ndjson").open()]
    assert len(letters) == sent and {(d["source"], d["code"]) for d in letters} == {
        ("scoring", "scoring_failed")
    }
    assert "No space left on device" in letters[0]["reason"]


def test_a_dead_replica_s_consumers_leave_the_groups(
    tmp_path: Path, pipeline: Any, postgres_url: str, redis_url: str
) -> None:
    """Replicas that ran before left their consumers in every group: one read an entry and died
    without acknowledging it, one had acknowledged all. The replica that takes the partitions
    claims the pending entry, scores it, and removes both consumers (idle, nothing pending) from
    the partitions' groups and the inbox's, keeping its own."""
    part = partition("gateway", PARTS)
    key, inbox = stream_key(STREAM, part), stream_key(STREAM, "in")
    left = points("gateway", T0, 3)
    with redis.Redis.from_url(redis_url) as r:
        for k in (key, inbox):
            r.xgroup_create(k, "selfheal", id="0", mkstream=True)
            r.xadd(k, {"body": ndjson(points("gateway", T0 - 60, 1))})
            ((_, [(entry, _)]),) = r.xreadgroup("selfheal", "dead-acked", {k: ">"})
            r.xack(k, "selfheal", entry)  # read and acknowledged
        r.xadd(key, {"body": ndjson(left)})
        r.xreadgroup("selfheal", "dead-pending", {key: ">"})  # read, never acknowledged
        r.xreadgroup("selfheal", "dead-pending", {inbox: ">"})
        time.sleep(bus_settings(redis_url)["lease_s"])  # idle as long as a lease
        with test_runtime.running_harness(
            tmp_path, pipeline, journal=postgres_url, sources={"redis": bus_settings(redis_url)}
        ) as harness:
            engine = harness.engine
            wait_for(lambda: engine.points_scored >= len(left))
            wait_for(lambda: pending(redis_url) == 0)
            mine = engine.bus.owner  # type: ignore[union-attr]
            names = {k: {c["name"].decode() for c in r.xinfo_consumers(k, "selfheal")} for k in (key, inbox)}
            assert names[key] == {mine} and names[inbox] <= {mine}  # it joins the inbox's as it reads one


def test_the_inbox_routes_points_to_their_partitions(harness: test_runtime.Harness, redis_url: str) -> None:
    engine = harness.engine
    batch = [p for s in ("gateway", "vector-db", "inference-a") for p in points(s, T0, 4)]
    with redis.Redis.from_url(redis_url) as r:
        r.xadd(stream_key(STREAM, "in"), {"body": ndjson(batch)})
        wait_for(lambda: engine.points_scored >= len(batch))
        assert r.xpending(stream_key(STREAM, "in"), "selfheal")["pending"] == 0
    wait_for(lambda: pending(redis_url) == 0)


def test_leases_move_when_a_replica_stops_renewing(postgres_url: str) -> None:
    a = Leases(postgres_url, stream=STREAM, partitions=6, owner="a", lease_s=1.0)
    b = Leases(postgres_url, stream=STREAM, partitions=6, owner="b", lease_s=1.0)
    try:
        assert a.renew().held == set(range(6))  # alone: all of them
        first = b.renew()
        assert first.held == set() and first.live == 2  # nothing free yet
        handed = a.renew()
        assert len(handed.surplus) == 3  # a fair share is 3: hand 3 back
        a.release(handed.surplus)
        assert len(b.renew().held) == 3
        assert set(owners(postgres_url, STREAM).values()) == {"a", "b"}
        began = time.monotonic()  # a stops renewing: within lease_s its partitions are b's
        took = wait_for(lambda: len(b.renew().held) == 6 and time.monotonic(), timeout=10)
        assert took - began < 1.0 + 1.5
        assert not a.valid
        assert a.renew().held == set()  # a's renewal finds them gone
    finally:
        a.leave()
        b.leave()
