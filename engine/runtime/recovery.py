"""Start-up after a crash: finish or report what the last process left, rebuild the policy host.

What ``kill -9`` can leave in the journal, and what happens to it here:
- an execution 'started' but never finished: the call may or may not have reached the target, so it
  is marked 'unknown' and reported (decision status ``unknown``), never repeated;
- a decision 'ready' (cleared, execution not yet recorded): executed once now if younger than
  ``stale_decision_s`` (after the safeguards again), otherwise reported as ``stale``;
- an execution that succeeded but whose verification was not recorded: verification starts now;
- a decision 'executing' whose actions all failed: marked ``failed`` (no longer blocks its rule);
- verifications 'watching' and approvals 'pending' simply continue (their deadlines are absolute);
- the kill switch is read back;
- the durable-rules host starts empty, so health facts are re-asserted from the last health events
  and recent anomaly events are replayed into it (their decisions are discarded: they are in the
  journal already) so that persistence counts ("3 of the last 5 ticks") survive the restart.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from engine.runtime.journal import DecisionStatus, ExecutionStatus
from engine.runtime.model import AnomalyEvent, Decision

if TYPE_CHECKING:
    from engine.runtime.process import Engine

log = logging.getLogger(__name__)


def recover(engine: Engine) -> dict[str, int]:
    """Bring the engine's state in line with its journal; returns counts of what was done (for logs/tests)."""
    journal = engine.journal
    now = time.time()
    done = {"unknown": 0, "resumed": 0, "stale": 0, "verifying": 0, "failed": 0, "replayed": 0}
    control = journal.control("paused")
    engine.paused = bool(control and control["value"])

    for execution in journal.executions_with_status(ExecutionStatus.IN_FLIGHT):
        journal.finish_execution(
            execution["id"], ExecutionStatus.UNKNOWN, error="engine stopped during the call; outcome unknown"
        )
        journal.settle_execution(execution["id"])
        if execution["kind"] == "action":
            journal.set_decision_status(
                execution["decision_id"],
                DecisionStatus.UNKNOWN,
                "the engine stopped while executing; check the target (not repeated)",
            )
        log.warning(
            "execution %s (%s %s on %s) was in flight at the crash: reported as unknown, not repeated",
            execution["id"],
            execution["kind"],
            execution["action"],
            execution["target"],
        )
        done["unknown"] += 1

    for row in journal.decisions_with_status([DecisionStatus.EXECUTING]):
        executions = [e for e in journal.executions_for(row["id"]) if e["kind"] == "action"]
        succeeded = [e for e in executions if e["status"] == ExecutionStatus.SUCCEEDED]
        if succeeded:
            engine.begin_verification(Decision.from_record(row), succeeded[-1]["id"])
            done["verifying"] += 1
        elif not executions:
            journal.set_decision_status(row["id"], DecisionStatus.READY)
        elif all(e["status"] == ExecutionStatus.FAILED for e in executions):
            # Left by an engine from before the failure was one commit: not in flight any more.
            journal.set_decision_status(
                row["id"], DecisionStatus.FAILED, executions[-1]["error"] or "the action failed"
            )
            done["failed"] += 1

    for row in journal.decisions_with_status([DecisionStatus.READY]):
        age = now - row["ts"]
        if age <= engine.settings.stale_decision_s:
            log.warning(
                "decision %s was decided but not executed before the crash: executing it once", row["id"]
            )
            engine.run_ready(Decision.from_record(row))
            done["resumed"] += 1
        else:
            journal.set_decision_status(
                row["id"], DecisionStatus.STALE, f"decided {age:.0f}s before the restart; not executed"
            )
            log.warning("decision %s is %.0fs old: reported as stale, not executed", row["id"], age)
            done["stale"] += 1

    health = journal.last_health()
    engine.health.update(health)
    # Rebuild the policy host in journal order: health changes and anomalies interleaved exactly as
    # the killed engine fed them, so streaks and persistence counts come back as they were.
    for row in journal.events_since(now - engine.settings.replay_horizon_s, kinds=("anomaly", "health")):
        payload = dict(row["payload"])
        payload["contributing"] = tuple(tuple(c) for c in payload.get("contributing") or ())
        try:
            if row["kind"] == "health":
                engine.components.policies.set_health(
                    row["service"], bool(payload["anomalous"]), row["score"] or 0.0
                )
            else:
                engine.components.policies.replay(AnomalyEvent(**payload))
        except Exception:
            log.exception("replaying event %s into the policy host failed", row["id"])
            continue
        done["replayed"] += 1
    for service, anomalous in health.items():  # older than the horizon: at least the current fact
        engine.components.policies.set_health(service, anomalous, 1.0 if anomalous else 0.0)
    if any(done.values()):
        log.info("recovered from the journal: %s", done)  # what went wrong was warned above
    return done
