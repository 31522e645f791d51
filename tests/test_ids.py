"""Fast ids: the right width, hex, and no repeats (in a process and across spawned processes);
the engine's ids sort by when they were made."""

from __future__ import annotations

import multiprocessing as mp
import re
import time

from engine.ids import hex_id
from engine.records import new_id


def _ids(n: int) -> list[str]:
    return [hex_id() for _ in range(n)]


def test_ids_are_hex_of_the_asked_width_and_unique() -> None:
    ids = _ids(20_000)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids[:100])
    assert len(set(ids)) == len(ids)
    assert re.fullmatch(r"[0-9a-f]{16}", hex_id(64))
    assert {len(hex_id(64)) for _ in range(2000)} == {16}


def test_spawned_processes_draw_different_ids() -> None:
    with mp.get_context("spawn").Pool(2) as pool:
        a, b = pool.map(_ids, [500, 500])
    assert not set(a) & set(b)


def test_new_ids_sort_by_when_they_were_made() -> None:
    """The journal's keys grow at the right edge of its indexes (``new_id``'s docstring says why)."""
    first = [new_id("dec") for _ in range(200)]
    time.sleep(0.003)
    later = [new_id("dec") for _ in range(200)]
    assert all(re.fullmatch(r"dec-[0-9a-f]{28}", i) for i in first + later)
    assert max(first) < min(later)
    assert len(set(first + later)) == 400
