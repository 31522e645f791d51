"""The engine end to end on a PostgreSQL journal (``journal: postgresql://...``): the in-process
engine tests of ``test_runtime`` (push, detect, decide, approve, act, verify, roll back) run again
with the journal on a real server instead of a SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_runtime
from test_runtime_support import TOKEN, AdminServer, fit_pipeline, write_rules

from engine.runtime.components import assemble
from engine.runtime.config import load_settings
from engine.runtime.server import build_engine, serve_in_thread
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
    with AdminServer() as admin:
        rules = write_rules(tmp_path / "rules", admin.url)
        components = assemble(pipeline, rules, bundle_version="b-test", detector_version="1")
        settings = load_settings(
            overrides={
                "port": 0,
                "token": TOKEN,
                "approver_tokens": {"alice": test_runtime.ALICE},
                "tick_s": 0.01,
                "verify_interval_s": 0.05,
                "journal": url,
            },
            environ={},
        )
        engine = build_engine(components, settings, tmp_path / "journals")
        assert engine.journal.path == url
        running = serve_in_thread(engine)
        try:
            harness = test_runtime.Harness(running, admin, tmp_path / "journals")
            harness.journal_path = url  # type: ignore[assignment]  # the readers open the server's
            yield harness
        finally:
            running.stop()
    assert not (tmp_path / "journals" / "engine.sqlite").exists()  # nothing went to a local file


@pytest.mark.parametrize("name", FLOWS)
def test_the_engine_runs_on_a_postgres_journal(name: str, harness: test_runtime.Harness) -> None:
    getattr(test_runtime, name)(harness)
