"""Start-up after a crash: finish or report what the last process left, rebuild the policy host.

What ``kill -9`` can leave in the journal, and what happens to it here:
- an execution 'started' but never finished: the call may or may not have reached the target.
  Where the target deduplicates by idempotency key (``ActionRunner.repeatable``: the simulator,
  Kubernetes, an ``http`` target marked ``dedup``), the same call is sent again with the same key:
  the target applies it at most once and answers what was done, and the execution is finished
  from that answer. Elsewhere it is marked 'unknown' (decision status ``unknown``), never
  repeated, and escalated to a human. An escalation is always sent again with its key: a
  notification may reach its receiver twice (the key lets it drop the repeat), never zero times,
  and an escalation cannot itself be escalated;
- a decision 'ready' (cleared, execution not yet recorded): executed once now if younger than
  ``stale_decision_s`` (after the safeguards again), otherwise reported as ``stale``;
- an execution that succeeded but whose verification was not recorded: verification starts now;
- a decision 'executing' whose actions all failed: marked ``failed`` (no longer blocks its rule);
- verifications 'watching' and approvals 'pending' simply continue (their deadlines are absolute);
- the durable-rules host starts empty, so health facts are re-asserted from the last health events
  and recent anomaly events are posted again in journal order (their decisions are discarded:
  they are in the journal already), so persistence counts ("3 of the last 5 ticks") survive.
  This replay is the one restart path of the policy state.

Replicas (``owns``: the targets a replica leases) settle only their own targets' executions and
decisions: at start a replica owns nothing yet, and when it takes a partition over from a dead
replica it settles what that one left (``settle``), exactly as a restart would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.records import ActionCall, AnomalyEvent, Decision, Execution
from engine.runtime.decider import Decider
from engine.runtime.executor import Executor, deadline
from engine.runtime.journal import DecisionStatus, ExecutionStatus, Journal
from engine.runtime.policies import Note, PolicyEngine

log = logging.getLogger(__name__)


@dataclass
class Recovered:
    """What recovery did (counts, for logs and tests), the health it read back, and the executions
    to dispatch once the engine runs (reconciled calls, resumed decisions)."""

    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("reconciled", "unknown", "resumed", "stale", "verifying", "failed", "replayed"), 0
        )
    )
    health: dict[str, bool] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


def recover(
    journal: Journal,
    decider: Decider,
    executor: Executor,
    policies: PolicyEngine,
    *,
    stale_decision_s: float,
    replay_horizon_s: float,
    now: float | None = None,
    owns: Callable[[str], bool] | None = None,
) -> Recovered:
    """Bring the journal and the policy host in line with what the last process left (module doc)."""
    now = time.time() if now is None else now
    out = Recovered()
    control = journal.control("paused")
    decider.paused = bool(control and control["value"])
    settle(journal, decider, executor, out, stale_decision_s=stale_decision_s, now=now, owns=owns)
    _replay(journal, policies, out, replay_horizon_s=replay_horizon_s, now=now)
    if any(out.counts.values()):
        log.info("recovered from the journal: %s", out.counts)  # what went wrong was warned above
    return out


def settle(
    journal: Journal,
    decider: Decider,
    executor: Executor,
    out: Recovered,
    *,
    stale_decision_s: float,
    now: float,
    owns: Callable[[str], bool] | None = None,
) -> None:
    """What the last process (or a dead replica) left of the targets ``owns`` picks (all by
    default): in-flight executions, executing and ready decisions (module docstring)."""
    mine = (lambda row: True) if owns is None else (lambda row: owns(row["target"]))
    _in_flight(journal, executor, out, mine)

    for row in journal.decisions_with_status([DecisionStatus.EXECUTING]):
        if not mine(row):
            continue
        executions = [e for e in journal.executions_for(row["id"]) if e["kind"] == "action"]
        succeeded = [e for e in executions if e["status"] == ExecutionStatus.SUCCEEDED]
        if succeeded:
            decision = Decision.from_record(row)
            with journal.transaction():
                journal.start_verification(
                    decision.id, succeeded[-1]["id"], deadline_ts=deadline(decision, now)
                )
                journal.set_decision_status(decision.id, DecisionStatus.VERIFYING)
            out.counts["verifying"] += 1
        elif not executions:
            journal.set_decision_status(row["id"], DecisionStatus.READY)
        elif all(e["status"] == ExecutionStatus.FAILED for e in executions):
            # Left by an engine from before the failure was one commit: not in flight any more.
            journal.set_decision_status(
                row["id"], DecisionStatus.FAILED, executions[-1]["error"] or "the action failed"
            )
            out.counts["failed"] += 1

    for row in journal.decisions_with_status([DecisionStatus.READY]):
        if not mine(row):
            continue
        age = now - row["ts"]
        if age <= stale_decision_s:
            log.warning(
                "decision %s was decided but not executed before the crash: executing it once", row["id"]
            )
            started = decider.run_ready(Decision.from_record(row))
            out.executions += started.executions
            out.notes += started.notes
            out.counts["resumed"] += 1
        else:
            journal.set_decision_status(
                row["id"], DecisionStatus.STALE, f"decided {age:.0f}s before the restart; not executed"
            )
            log.warning("decision %s is %.0fs old: reported as stale, not executed", row["id"], age)
            out.counts["stale"] += 1


def _replay(
    journal: Journal, policies: PolicyEngine, out: Recovered, *, replay_horizon_s: float, now: float
) -> None:
    out.health = journal.last_health()
    # Rebuild the policy host in journal order: health changes and anomalies interleaved exactly as
    # the killed engine fed them, so streaks and persistence counts come back as they were.
    for row in journal.events_since(now - replay_horizon_s, kinds=("anomaly", "health")):
        try:
            event = AnomalyEvent.model_validate(row["payload"])
            if row["kind"] == "health":
                policies.set_health(event.service, anomalous=event.anomalous)
            else:
                policies.post(event)  # its decision was journaled the first time: drop it
        except Exception as exc:
            log.warning("replaying event %s into the policy host failed: %s", row["id"], exc)
            continue
        out.counts["replayed"] += 1
    for service, anomalous in out.health.items():  # older than the horizon: at least the current fact
        policies.set_health(service, anomalous=anomalous)


def _in_flight(journal: Journal, executor: Executor, out: Recovered, mine: Callable[[dict], bool]) -> None:
    """Executions a crash left 'started': asked again where the target can say, else escalated."""
    for row in journal.executions_with_status(ExecutionStatus.IN_FLIGHT):
        if not mine(row):
            continue
        decision_row = journal.decision(row["decision_id"])
        if decision_row is None:  # cannot happen: both are written in one transaction
            continue
        decision = Decision.from_record(decision_row)
        call = ActionCall(row["action"], dict(row["params"] or {}))
        what = f"{row['kind']} {row['action']} on {row['target']}"
        if row["kind"] == "escalation" or executor.actions.repeatable(call, target=row["target"]):
            log.warning(
                "execution %s (%s) was in flight at the crash: %s",
                row["id"],
                what,
                "sending it again with the same idempotency key (the receiver may drop a repeat)"
                if row["kind"] == "escalation"
                else "asking the target again with the same idempotency key (it applies the call at "
                "most once)",
            )
            out.executions.append(Execution(row["id"], decision, row["kind"], call))
            out.counts["reconciled"] += 1
            continue
        with journal.transaction():
            journal.finish_execution(
                row["id"], ExecutionStatus.UNKNOWN, error="engine stopped during the call; outcome unknown"
            )
            journal.settle_execution(row["id"])
            if row["kind"] == "action":
                journal.set_decision_status(
                    decision.id,
                    DecisionStatus.UNKNOWN,
                    "the engine stopped while executing; check the target (not repeated)",
                )
        log.warning(
            "execution %s (%s) was in flight at the crash: reported as unknown, not repeated", row["id"], what
        )
        out.counts["unknown"] += 1
        out.notes += executor.escalate(
            decision,
            f"the engine stopped during {what}; its outcome is unknown and it was not repeated: "
            "check the target",
        )
