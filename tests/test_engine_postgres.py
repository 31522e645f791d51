"""The engine end to end on a PostgreSQL journal (``journal: postgresql://...``): the in-process
engine tests of ``test_runtime`` (push, detect, decide, approve, act, verify, roll back) run again
with the journal (and the detector states) on a real server instead of SQLite files."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_runtime
from test_runtime_support import fit_pipeline, wait_for

from engine.errors import RuntimeEngineError
from engine.runtime.journal import DecisionStatus
from engine.runtime.outcomes import outcomes_frame
from engine.runtime.states import PostgresStates
from engine.testing.services import PostgresServer

pytestmark = pytest.mark.slow

FLOWS = [
    "test_pushed_points_lead_to_a_verified_action_in_the_journal",
    "test_high_risk_action_waits_for_an_authenticated_approver",
    "test_rejection_and_expiry_deny",
    "test_failed_verification_escalates_and_rolls_back",
]


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return fit_pipeline()


@pytest.fixture
def harness(tmp_path: Path, pipeline: Any, postgres_server: PostgresServer) -> Iterator[test_runtime.Harness]:
    url = postgres_server.database()
    with test_runtime.running_harness(tmp_path, pipeline, journal=url) as harness:
        assert harness.journal_path == url  # the readers open the server's journal too
        yield harness
    assert not list((tmp_path / "journals").glob("*.sqlite"))  # nothing went to a local file
    assert PostgresStates(url, pipeline).load()  # the detector states went to the server at the stop


@pytest.mark.parametrize("name", FLOWS)
def test_the_engine_runs_on_a_postgres_journal(name: str, harness: test_runtime.Harness) -> None:
    getattr(test_runtime, name)(harness)


def test_the_journal_s_password_is_shown_nowhere(
    tmp_path: Path, pipeline: Any, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The journal's URL holds its password (the test server trusts 127.0.0.1, so any password
    connects): the engine's logs, its /metrics, console pages, journal errors and the outcomes it
    exports show the URL with ``***`` instead, and the console's reader still connects."""
    url = postgres_server.database().replace("selfheal@", "selfheal:hunter2-secret@")
    caplog.set_level(logging.INFO, logger="engine")  # a CLI test run before may have raised its level
    with test_runtime.running_harness(tmp_path, pipeline, journal=url) as harness:
        harness.push(5)
        harness.push(4, inference_a=True)
        wait_for(lambda: harness.decision_with(DecisionStatus.VERIFYING, "inference-a"))
        journal = harness.engine.journal
        assert str(journal.path) == url.replace("hunter2-secret", "***")
        pages = [httpx.get(f"{harness.url}{p}", timeout=30) for p in ("/metrics", "/", "/journal")]
        assert all(r.status_code == 200 for r in pages)
        with journal.reader() as reader, pytest.raises(RuntimeEngineError) as refused:
            reader.set_control("paused", True, actor="x")
        exported = outcomes_frame(journal)
        assert exported.height == 1
    shown = [caplog.text, *(r.text for r in pages), str(refused.value), *exported["journal"].to_list()]
    assert "journal postgresql://selfheal:***@" in caplog.text  # the startup line names it, redacted
    assert not [s for s in shown if "hunter2" in s]
