"""An error that repeats is logged once with its traceback, then counted (engine.runtime.lograte)."""

from __future__ import annotations

import logging

import pytest

from engine.runtime.lograte import Repeating


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fail(repeating: Repeating, n: int, clock: Clock, step: float) -> None:
    for _ in range(n):
        try:
            raise ConnectionError("server closed the connection")
        except ConnectionError:
            repeating.failed("the commit failed")
        clock.now += step


def test_the_first_failure_is_logged_whole_repeats_are_counted_and_recovery_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.lograte")
    clock = Clock()
    repeating = Repeating(log, "journal commits", every_s=30.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.lograte"):
        _fail(repeating, 600, clock, 0.05)  # 30 s of failures, 20 a second
        records = list(caplog.records)
        assert len(records) == 1 and records[0].exc_info is not None
        assert records[0].getMessage() == "the commit failed"
        _fail(repeating, 1, clock, 0.0)  # 30 s after the first: one line with the count
        summary = caplog.records[-1]
        assert len(caplog.records) == 2 and summary.exc_info is None
        assert "journal commits: still failing, 600 more time(s)" in summary.getMessage()
        assert "601 since 30 s ago" in summary.getMessage()
        assert "server closed the connection" in summary.getMessage()
        repeating.worked()
        said = caplog.records[-1].getMessage()
        assert said == "journal commits works again after 601 failure(s) over 30.0 s"
        repeating.worked()  # said once
        assert len(caplog.records) == 3
        _fail(repeating, 2, clock, 0.05)  # a new outage: its first failure logged whole again
        assert len(caplog.records) == 4 and caplog.records[-1].exc_info is not None
