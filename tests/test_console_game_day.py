"""The game day's high-risk approval answered by a person through the console, in headless Chromium.

The game day's first fault (a bad model on inference-b) runs on the simulated platform against the
real engine, which asks for approval before rolling the model back. The experiment does not answer
it (``decide: ignore``): the approver does, signed in to the console with their own token, from
the request that appeared live, with a reason. The rollback then runs and is verified, and the
experiment's verdict (read from the engine's journal) passes.

Time: the platform runs ``SPEED`` times the wall clock and the policy's 15-minute TTL is scaled
with it (``engine.chaos.timescale``), so the person has 900 / ``SPEED`` wall seconds. The browser
signs in before the fault and every wait is on a condition (a selector, the journal), not a sleep.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import screenshot
from test_runtime_support import wait_for

from engine.chaos.api import EXPERIMENTS_DIR, build_components
from engine.chaos.experiment import ApprovalAnswer, PauseStep, load_experiment
from engine.chaos.results import analyse
from engine.chaos.runner import ChaosRun
from engine.runtime.journal import Journal

SPEED = 45.0
"""20 wall seconds to answer a 15-minute approval; 30 platform minutes take 40 wall seconds."""
APPROVER = "ml-oncall"
REASON = "game day: errors since the rollout, checked the canary"


@pytest.mark.slow
@pytest.mark.alone
def test_the_game_days_rollback_is_approved_by_a_person_in_the_console(tmp_path: Path, browser: Any) -> None:
    game_day = load_experiment(EXPERIMENTS_DIR / "game_day.yaml")
    fault, answer = game_day.method[0], game_day.approvals[0]
    assert fault.fault.kind == "bad_deploy" and answer.action == "rollback_model"  # type: ignore[union-attr]
    (expect,) = [e for e in game_day.expect if e.fault == fault.fault.name]  # type: ignore[union-attr]
    experiment = game_day.model_copy(
        update={
            "method": [fault, PauseStep(pause=expect.within)],
            "approvals": [ApprovalAnswer(**{**answer.model_dump(), "decide": "ignore"})],  # the person's
            "expect": [expect],
        }
    )
    run = ChaosRun(
        experiment, out_dir=tmp_path / "run", components=build_components(), name="game_day", speed=SPEED
    )
    record: dict[str, Any] = {}
    failed: list[BaseException] = []

    def run_it() -> None:
        try:
            record.update(run.run())
        except BaseException as exc:  # the test's thread reports it
            failed.append(exc)

    thread = threading.Thread(target=run_it, name="game-day", daemon=True)
    thread.start()
    ctx = wait_for(lambda: run.ctx or failed, timeout=120)
    assert not failed, failed
    engine = ctx.engine.engine  # type: ignore[union-attr]

    context = browser.new_context(base_url=ctx.engine_url)  # type: ignore[union-attr]
    page = context.new_page()
    page.goto("/login")
    page.fill("input[name=token]", engine.settings.approver_tokens[APPROVER])
    page.click("#login button[type=submit]")
    page.wait_for_url(f"{ctx.engine_url}/approvals")  # type: ignore[union-attr]
    assert page.inner_text("#who") == APPROVER
    page.wait_for_selector("body[data-live=open]")

    (pending,) = wait_for(lambda: engine.journal.pending_approvals() or failed or not thread.is_alive(), 600)
    assert not failed and thread.is_alive(), failed or "the run ended without an approval request"
    card = f"article[data-approval={pending['id']}]"
    page.wait_for_selector(card, timeout=5_000)  # live: no reload
    shown = page.inner_text(card)
    assert "rollback_model on inference-b" in shown and "risk high" in shown and APPROVER in shown
    assert page.get_attribute(f"{card} .diagnosis", "data-kind") == "bad_deploy"
    assert page.get_attribute(f"{card} .diagnosis", "data-role") == "root"
    assert page.locator(f"{card} .diagnosis .evidence li").count() > 0
    # The platform's clock runs SPEED times the wall's: the sparklines sample it, not the wall.
    assert page.locator(f'{card} svg[aria-label="score around the event"] polyline').count() == 1
    assert page.locator(f"{card} svg line.event").count() == 1  # the anomaly, marked
    screenshot(page, tmp_path, "game-day-approval")
    page.fill(f"{card} input[name=reason]", REASON)
    page.click(f"{card} button.approve")
    page.wait_for_selector("#flash")
    assert f"approved by {APPROVER}" in page.inner_text("#flash")

    history = ctx.engine._server.config.app.state.console_live.history  # type: ignore[union-attr]
    wait_for(lambda: len(history.of("inference-b")) >= 10 or not thread.is_alive(), timeout=120)
    page.goto("/")
    row = page.locator("tr[data-service=inference-b]")
    points = row.locator('svg[aria-label="score, last hour"] polyline').get_attribute("points") or ""
    assert len(points.split()) >= 10, points  # a point per 30 s of the platform's clock, at most
    screenshot(page, tmp_path, "game-day-services")

    thread.join(timeout=900)
    assert not thread.is_alive(), "the game day did not end"
    assert not failed, failed
    result = analyse(record)
    assert result.passed, result.reasons
    (approval,) = result.approvals
    assert (approval["status"], approval["approver"], approval["reason"]) == ("approved", APPROVER, REASON)
    (healed,) = result.faults
    (action,) = healed.actions
    assert (action["action"], action["target"], action["verification"]) == (
        "rollback_model",
        "inference-b",
        "verified",
    )
    assert action["executed"] >= approval["settled"]
    rollbacks = [a for a in record["admin"] if a["op"] == "rollback_model"]
    assert [a["service"] for a in rollbacks] == ["inference-b"]  # once, on the root
    with Journal(Path(record["journal_path"]), read_only=True) as journal:
        notes = [r for r in journal.recent("approvals", limit=10) if r["id"] == pending["id"]]
    assert notes and notes[0]["approver"] == APPROVER
