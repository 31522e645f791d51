"""Three engine replicas on one Redis and one PostgreSQL, each `selfheal run` in its own process.

A fault whose telemetry reaches all three (pushed to each in turn) is healed once: one approval,
one execution. The replica that owns the faulty service is SIGKILLed while its approval waits:
its partitions move to the others within 15 s, the approval given through another replica is
run by the new owner, which verifies the remediation on the detector state it restored; no
action runs twice, and every point that was acknowledged was scored by someone.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from test_bus import pending
from test_runtime_support import (
    SERVICES,
    T0,
    AdminServer,
    EngineProcess,
    ndjson,
    service_points,
    wait_for,
    write_rules,
)

from engine.runtime.leases import owners as lease_owners
from engine.telemetry.columns import partition

# alone (see `make test`): three engine processes balance partitions on 4 s leases; beside another
# test on two cores, CI once saw them not settle within 90 s (alone: ~27 s for the whole test)
pytestmark = [pytest.mark.slow, pytest.mark.alone]

STREAM = "replicas"
PARTS = 6
LEASE_S = 4.0
ALICE = "alice-token-5678"


def owners(url: str) -> dict[int, int]:
    """Each partition's owner's pid (live leases only)."""
    return {part: int(owner.split("/")[1]) for part, owner in lease_owners(url, STREAM).items()}


def journal_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as db:
        return db.execute(sql).fetchall()


class Feed:
    """Telemetry of every service, one second at a time, pushed to the live replicas in turn."""

    def __init__(self, replicas: list[EngineProcess]) -> None:
        self.replicas = replicas
        self.t = T0
        self.seconds = 0
        self.turn = 0

    def push(self, seconds: int = 1, **anomalous: bool) -> None:
        for _ in range(seconds):
            live = [r for r in self.replicas if r.alive()]
            replica = live[self.turn % len(live)]
            self.turn += 1
            body = ndjson(list(service_points(self.t, 1, **anomalous)))
            answer = httpx.post(f"{replica.url}/v1/telemetry", content=body, timeout=30)
            assert answer.status_code == 202, answer.text
            self.t += 1
            self.seconds += 1


def test_three_replicas_heal_once_and_survive_the_owner_s_death(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    with AdminServer() as admin:
        rules = write_rules(tmp_path / "rules", admin.url, approval_ttl="10m")
        policy = rules / "platform.yaml"
        policy.write_text(policy.read_text().replace("deadline: 4s", "deadline: 120s"))
        config = (
            f"approver_tokens: {{alice: {ALICE}}}\ntick_s: 0.02\nverify_interval_s: 0.2\n"
            "state_snapshot_s: 0\nsources:\n"
            f"  redis: {{url: '{redis_url}', stream: {STREAM}, partitions: {PARTS}, lease_s: {LEASE_S}}}\n"
        )
        replicas = [
            EngineProcess(
                tmp_path / f"r{i}",
                rules,
                config=config + f"scores_file: {tmp_path / f'r{i}' / 'scores.ndjson'}\n",
                env={"SELFHEAL_ENGINE_JOURNAL": postgres_url},
            )
            for i in range(3)
        ]
        starting = [threading.Thread(target=r.start, kwargs={"timeout_s": 240}) for r in replicas]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        try:
            _scenario(replicas, admin, redis_url, postgres_url)
        finally:
            for replica in replicas:
                if replica.alive():
                    replica.stop()


def _scenario(replicas: list[EngineProcess], admin: AdminServer, redis_url: str, postgres_url: str) -> None:
    assert all(r.alive() for r in replicas), [r.tail() for r in replicas]
    pids = {r.proc.pid: r for r in replicas if r.proc is not None}

    def balanced() -> bool:
        held = owners(postgres_url)
        counts = defaultdict(int)
        for pid in held.values():
            counts[pid] += 1
        return len(held) == PARTS and set(counts) == set(pids) and set(counts.values()) == {2}

    wait_for(balanced, timeout=90, interval=0.2)

    feed = Feed(replicas)
    feed.push(6)
    feed.push(3, vector_db=True)
    approvals = wait_for(lambda: httpx.get(f"{replicas[0].url}/v1/approvals").json(), timeout=60)
    assert len(approvals) == 1 and approvals[0]["action"] == "rollback_model"
    assert admin.calls() == []  # nothing ran yet: it waits for alice

    vector_part = partition("vector-db", PARTS)
    owner = pids[owners(postgres_url)[vector_part]]
    other = next(r for r in replicas if r is not owner)  # a burst in the streams, not all scored yet
    body = ndjson([p for k in range(40) for p in service_points(feed.t + k, 1)])
    assert httpx.post(f"{other.url}/v1/telemetry", content=body, timeout=30).status_code == 202
    feed.t, feed.seconds = feed.t + 40, feed.seconds + 40
    owner.kill9()
    killed = time.monotonic()
    survivors = [r for r in replicas if r is not owner]
    live = {r.proc.pid for r in survivors if r.proc is not None}
    wait_for(lambda: owners(postgres_url).get(vector_part) in live, timeout=30, interval=0.1)
    moved = time.monotonic() - killed
    assert moved < 15, f"the partition moved after {moved:.1f} s"
    print(f"MOVED {moved:.2f}")
    wait_for(
        lambda: set(owners(postgres_url).values()) <= live and len(owners(postgres_url)) == PARTS, timeout=30
    )

    # The approval is still there, on any replica, and is given through one that did not ask.
    (still,) = httpx.get(f"{survivors[1].url}/v1/approvals").json()
    assert still["id"] == approvals[0]["id"]
    approve = f"{survivors[1].url}/v1/approvals/{still['id']}/approve"
    answer = httpx.post(approve, json={"reason": "bad canary"}, headers={"Authorization": f"Bearer {ALICE}"})
    assert answer.status_code == 200, answer.text

    def verified() -> bool:
        feed.push(1)
        rows = journal_rows(postgres_url, f"SELECT status FROM decisions WHERE id = '{still['decision_id']}'")
        return rows[0][0] == "verified"

    wait_for(verified, timeout=120, interval=0.2)
    assert len(admin.calls("/admin/rollback_model")) == 1  # once, though three replicas saw it
    assert admin.calls("/admin/rollback_model")[0]["key"] == f"{still['decision_id']}:action"
    assert journal_rows(postgres_url, "SELECT count(*) FROM approvals")[0][0] == 1
    actions = journal_rows(postgres_url, "SELECT service, status FROM executions WHERE kind = 'action'")
    assert actions == [("vector-db", "succeeded")], actions

    # No acknowledged point unscored: every entry is acknowledged, and the replicas' score files
    # together hold a row for every second of every service (the last, still open, aside).
    feed.push(2)
    wait_for(lambda: pending(redis_url, STREAM, PARTS) == 0, timeout=60)
    seconds: dict[str, set[float]] = defaultdict(set)
    for replica in replicas:
        path = Path(str(replica.config.parent / "scores.ndjson"))
        for line in path.read_text().splitlines() if path.exists() else []:
            row = json.loads(line)
            seconds[row["service"]].add(row["ts"])
    for service in SERVICES:
        assert len(seconds[service]) >= feed.seconds - 2, (service, len(seconds[service]), feed.seconds)
    new_owner = pids[owners(postgres_url)[vector_part]]
    print([line for line in new_owner.log.read_text().splitlines() if "took partition" in line])
    assert "took partition" in new_owner.log.read_text()
    for replica in survivors:  # the approved decision was run by its owner alone, not raced
        assert "already executed" not in replica.log.read_text()
