"""The console's live side without a server: what the engine's threads pay for a note, one snapshot
shared by every stream, views built once per change, and score history on the data's clock."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

from engine.runtime.console.live import History, Live, Views


def _live(**kw: Any) -> Live:
    history = History(dict, dict)
    return Live(history, stopped=lambda: True, **kw)


def test_a_note_only_bumps_its_topics_version() -> None:
    live = _live()
    live.hear("approval_requested", {"decision_id": "dec-1"})
    live.hear("anomaly", {"service": "svc"})  # not watched: nothing changes
    live.hear("verified", {"decision_id": "dec-1"})
    live.hear("executed", {"decision_id": "dec-1"})
    assert live.versions == {"approvals": 1, "services": 2, "control": 0}
    assert live.snapshot.version == 0  # published by the producer, not by the engine's thread


def test_streams_share_one_message_per_change_and_a_slow_one_skips_to_the_latest() -> None:
    live = _live()

    async def run() -> tuple[list[bytes], list[bytes], int]:
        gone = {"fast": False, "slow": False}

        async def quit_when(name: str) -> bool:
            return gone[name]

        fast = live.stream(lambda: quit_when("fast"))
        slow = live.stream(lambda: quit_when("slow"))
        got_fast = [await anext(fast), await anext(fast)]  # retry, then the current snapshot
        got_slow = [await anext(slow), await anext(slow)]
        clients = live.clients
        waiting = asyncio.ensure_future(anext(fast))
        await asyncio.sleep(0)
        for kind in ("approval_requested", "executed", "paused"):
            await asyncio.to_thread(live.hear, kind, {})
            await asyncio.to_thread(live.publish)  # three changes, three snapshots
        got_fast.append(await asyncio.wait_for(waiting, 5))
        got_slow.append(await asyncio.wait_for(anext(slow), 5))  # it missed two: it gets the latest
        gone["fast"] = gone["slow"] = True
        for stream in (fast, slow):
            await stream.aclose()
        return got_fast, got_slow, clients

    fast, slow, clients = asyncio.run(run())
    assert clients == 2 and live.clients == 0
    assert fast[0] == slow[0] == b"retry: 1000\n\n"
    assert fast[1] is slow[1]  # the same bytes object: built once, not per client
    assert b'"version":1' in fast[2] and b'"approvals":1' in fast[2]  # woken by the first publish
    assert slow[2] is live.snapshot.message and b'"version":3' in slow[2]
    assert b'"control":1' in slow[2] and b"event: change" in slow[2]


def test_approvals_go_out_at_once_and_the_services_table_at_most_every_services_s() -> None:
    live = _live(services_s=5.0)
    live.hear("verified", {})
    assert live.publish(now=100.0)  # the first change of the table: at once
    live.hear("verified", {})
    assert not live.publish(now=101.0)  # held back until 105
    live.hear("approval_requested", {})
    assert live.publish(now=102.0)
    assert live.snapshot.topics == {"approvals": 1, "services": 1, "control": 0}
    assert live.publish(now=105.0) and live.snapshot.topics["services"] == 2
    assert not live.publish(now=106.0)  # nothing changed


def test_a_view_is_built_once_per_version_however_many_ask() -> None:
    live = _live()
    views = Views(live)
    builds: list[int] = []

    def build() -> int:
        builds.append(1)
        return len(builds)

    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(views.get("services", build))) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [1] * 50 and len(builds) == 1
    live.hear("approval_requested", {})  # another topic: the services view stands
    assert views.get("services", build) == 1
    live.hear("verified", {})
    assert views.get("services", build) == 2 and views.get("services", build) == 2


def test_history_follows_the_datas_clock_not_the_wall() -> None:
    """A chaos run's platform runs faster than the wall: its hour fills in wall seconds."""
    scores: dict[str, tuple[float, float]] = {}
    clock: dict[str, float] = {}
    history = History(lambda: scores, lambda: clock, every_s=30.0)
    for k in range(600):  # 10 s of data apart, 100 minutes: every third is a point
        scores["svc"], clock["svc"] = (k / 600, 0.0), 10_000.0 + 10 * k
        history.sample()
    times = [t for t, _ in history.of("svc")]
    assert times[-1] == 15_970.0 and times[0] == 15_970.0 - 3600  # the last hour only
    assert all(b - a == 30.0 for a, b in itertools.pairwise(times))
    around = history.around("svc", 14_000.0)
    assert [t for t, _ in around] == [t for t in times if 13_100 <= t <= 14_900]
    assert not history.sample()  # the clock did not move: nothing added
    clock["svc"] = 0.0  # another run's data: start again
    assert history.sample() and history.of("svc") == [(0.0, scores["svc"][0])]
    scores.clear()
    history.sample()  # the engine forgot the service
    assert history.of("svc") == []
