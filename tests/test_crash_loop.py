"""kill -9 in a loop against a real engine process: the guarantees of the crash benchmark, asserted.

The loop is ``tests/benchmarks/bench_crash.py:crash_loop`` (a ``selfheal run`` process, the
simulated platform as its target, telemetry that triggers automatic and approved actions, an
operator approving through the API), here with fewer restarts: no approval lost, no double
execution, the journal intact, every execution a crash left in flight reconciled or escalated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).with_name("benchmarks")))

from bench_crash import crash_loop

pytestmark = [pytest.mark.slow, pytest.mark.alone]


def test_kill_9_loop_loses_no_approval_repeats_nothing_and_leaves_nothing_unknown(tmp_path: Path) -> None:
    report = crash_loop(5, (1.0, 2.5), seed=3, workdir=tmp_path)
    c = report.checked
    assert c.problems == [], report.summary()
    assert len(report.ready_s) == 5 and c.integrity == "ok"
    assert c.approvals["requested"] >= 2 and c.approvals["lost"] == 0, report.summary()
    assert c.approvals["approved"] == c.approvals["requested"], report.summary()
    assert c.executions["keys applied at the target"] >= 5 and c.executions["double"] == 0
    # Two of the five kills wait for a call in flight: recovery had something to reconcile.
    assert c.recovered["reconciled"] + c.recovered["unknown"] >= 1, report.summary()
    assert c.unknown["left silently unknown"] == 0
    assert c.recovered["replayed"] > 0  # every start rebuilt the policy host from the journal
