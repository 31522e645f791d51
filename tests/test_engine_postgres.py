"""The engine end to end on a PostgreSQL journal (``journal: postgresql://...``): the in-process
engine tests of ``test_runtime`` (push, detect, decide, approve, act, verify, roll back) run again
with the journal (and the detector states) on a real server instead of SQLite files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_runtime
from test_runtime_support import fit_pipeline

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
