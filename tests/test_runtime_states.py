"""The scoring stage's state store: a stage restarted on its snapshot scores on as if it had never
stopped; a snapshot of another detector is never read into this one; a bad state costs only its
series. The stores: a SQLite file, and the journal's PostgreSQL database (a real server) where
replicas share them. (The kill -9 version, a real ``selfheal run`` process: ``test_engine_stream.py``.)"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.runtime.scoring import ScoringStage
from engine.runtime.shards import WorkerShare
from engine.runtime.states import PostgresStates, SqliteStates, StateStore
from engine.telemetry.columns import partition
from engine.testing.detectors import _epoch_points, stream_factory


def _ticks(points: list[Any], size: int = 97) -> list[list[tuple[float, list[Any]]]]:
    return [[(0.0, points[i : i + size])] for i in range(0, len(points), size)]


def _scores(stage: ScoringStage, ticks: list[Any]) -> list[tuple[str, float, float]]:
    out = []
    for tick in ticks:
        scored = stage.step(tick)
        out += [(r.service, r.ts, s) for r, s in zip(scored.rows, scored.scores.tolist(), strict=True)]
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., StateStore]:
    """Opens a store (``(detector, owns=None)``) on one SQLite file, or one PostgreSQL database."""
    if request.param == "sqlite":
        return lambda det, owns=None: SqliteStates(tmp_path / "s.sqlite", det, owns)
    url = request.getfixturevalue("postgres_url")
    return lambda det, owns=None: PostgresStates(url, det, owns)


def test_a_stage_restarted_on_its_snapshot_scores_as_one_that_never_stopped(
    store_at: Callable[..., StateStore],
) -> None:
    det, points = stream_factory("PCA")()
    ticks = _ticks(_epoch_points(points))
    half = len(ticks) // 2
    want = _scores(ScoringStage(det), ticks)

    first = ScoringStage(det, store=store_at(det), snapshot_s=3600)
    got = _scores(first, ticks[:half])
    first.close()  # a clean stop writes what the interval had not
    again = ScoringStage(det, store=store_at(det), snapshot_s=0)
    assert set(again.states) == {"svc-a", "svc-b", "retrieval-1"}
    got += _scores(again, ticks[half:])
    assert got == want
    cold = _scores(ScoringStage(det), ticks[half:])  # without the states: it re-warms
    assert cold != want[len(want) - len(cold) :]


def test_forgotten_series_leave_the_snapshot(store_at: Callable[..., StateStore]) -> None:
    det, points = stream_factory("HBOS")()
    stage = ScoringStage(det, store=store_at(det), snapshot_s=0)
    _scores(stage, _ticks(_epoch_points(points))[:5])
    stage.forget(["svc-a"])
    stage.close()
    assert set(store_at(det).load()) == {"svc-b", "retrieval-1"}


def test_another_detectors_snapshot_is_discarded_and_a_bad_state_dropped_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    det, points = stream_factory("HBOS")()
    other, _ = stream_factory("PCA")()
    path = tmp_path / "s.sqlite"
    stage = ScoringStage(det, store=SqliteStates(path, det), snapshot_s=0)
    _scores(stage, _ticks(_epoch_points(points))[:5])
    stage.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE states SET state = x'00ff' WHERE series = 'svc-a'")
    with caplog.at_level(logging.WARNING, logger="engine.runtime.states"):
        assert set(SqliteStates(path, det).load()) == {"svc-b", "retrieval-1"}
        assert "'svc-a' cannot be restored" in caplog.text
        assert SqliteStates(path, other).load() == {}
        assert "states of another detector discarded" in caplog.text
    assert SqliteStates(path, det).load() == {}  # gone for good: the other detector's file now


def test_workers_sharing_a_store_each_restore_their_own_series_whatever_their_number(
    store_at: Callable[..., StateStore],
) -> None:
    """Each scoring worker loads the series it now owns, so a restart with another number of
    workers finds every series' state (``engine.runtime.shards``: a service's worker is
    ``partition(service, workers)``)."""
    det, points = stream_factory("HBOS")()
    mine = {s for s in ("svc-a", "svc-b", "retrieval-1") if partition(s, 2) == 0}
    assert 0 < len(mine) < 3
    stage = ScoringStage(det, store=store_at(det, WorkerShare(0, 2)), snapshot_s=0)
    _scores(stage, _ticks([p for p in _epoch_points(points) if p[1] in mine])[:5])  # worker 0's points
    stage.close()
    assert set(store_at(det).load()) == mine
    stage = ScoringStage(det, store=store_at(det), snapshot_s=0)
    _scores(stage, _ticks(_epoch_points(points))[:5])
    stage.close()
    for n in (2, 3):
        shares = [set(store_at(det, WorkerShare(i, n)).load()) for i in range(n)]
        assert set().union(*shares) == {"svc-a", "svc-b", "retrieval-1"}
        assert sum(map(len, shares)) == 3
        for i, share in enumerate(shares):
            assert all(partition(s, n) == i for s in share)


def test_replicas_of_two_detectors_keep_their_own_states_on_postgres(postgres_url: str) -> None:
    """A rolling upgrade: replicas of the old and the new detector share the database; neither
    reads nor discards the other's states."""
    det, points = stream_factory("HBOS")()
    other, _ = stream_factory("PCA")()
    for detector in (det, other):
        stage = ScoringStage(detector, store=PostgresStates(postgres_url, detector), snapshot_s=0)
        _scores(stage, _ticks(_epoch_points(points))[:3])
        stage.close()
    for detector in (det, other):
        assert set(PostgresStates(postgres_url, detector).load()) == {"svc-a", "svc-b", "retrieval-1"}
