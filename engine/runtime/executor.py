"""The executing stage: actuator calls, their outcomes in the journal, escalations and rollbacks.

Calls run in a bounded thread pool (they do I/O), so a slow target never stalls scoring or
deciding; each call is capped by the engine's ``action_timeout_s``. An outcome is not written by
the pool thread: it is handed to the journal writer and rides in its next commit (``record``),
because each finished call committing on its own queued on the journal lock in front of the
decisions. Until that commit an execution stays 'started': a crash in between reports it, as for
a crash during the call.

Escalations and rollbacks are executions too (``follow_up``): journaled before the call, their
idempotency key (``DECISION:escalation``, ``DECISION:rollback``) makes each run at most once,
across restarts as well.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from engine.errors import ActionError
from engine.records import ActionCall, Decision, Execution, Outcome
from engine.runtime.journal import DecisionStatus, ExecutionStatus, Journal
from engine.runtime.policies import Note

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 300.0  # verification deadline when the decision declares none


@runtime_checkable
class ActionRunner(Protocol):
    """Runs one action on one target. Raises ``engine.errors.ActionError`` when it fails.

    ``idempotency_key`` is unique per (decision, kind); backends that can send it along so that a
    target seeing the same key twice acts once, and ``repeatable`` says whether this target does
    (a call left unanswered by a crash can then be sent again to learn what happened).
    ``timeout_s`` caps what the call may wait on (each request or program it runs);
    ``requested_at`` (epoch seconds, fixed per decision) keeps a repeated call byte-identical.
    """

    def run(
        self,
        call: ActionCall,
        *,
        target: str,
        idempotency_key: str,
        timeout_s: float,
        requested_at: float | None = None,
    ) -> Any: ...
    def repeatable(self, call: ActionCall, *, target: str) -> bool: ...


class Executor:
    """Dispatches executions to actuators; the journal writer records their outcomes."""

    def __init__(
        self,
        journal: Journal,
        actions: ActionRunner,
        *,
        timeout_s: float,
        threads: int,
        on_start: Callable[[Execution], None] = lambda e: None,
        on_outcome: Callable[[Outcome], None] = lambda o: None,
    ) -> None:
        self.journal = journal
        self.actions = actions
        self.timeout_s = timeout_s
        self.on_start = on_start
        self.on_outcome = on_outcome
        # bounded: idle threads cost memory and every runnable one competes for the interpreter
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="act")

    def dispatch(self, execution: Execution) -> None:
        try:
            self._pool.submit(self.call, execution)
        except RuntimeError:  # the pool is shut down: the engine is stopping
            log.error(
                "engine stopping: %s %s for %s was journaled but not run; the next start reports it",
                execution.kind,
                execution.call.action,
                execution.decision.id,
            )

    def call(self, execution: Execution) -> Outcome:
        """Call the actuator; the outcome goes to ``on_outcome`` (and is returned)."""
        self.on_start(execution)
        call, decision = execution.call, execution.decision
        try:
            result = self.actions.run(
                call,
                target=decision.target,
                idempotency_key=execution.idempotency_key,
                timeout_s=self.timeout_s,
                requested_at=decision.window_end,
            )
        except Exception as exc:
            error = str(exc) if isinstance(exc, ActionError) else f"{type(exc).__name__}: {exc}"
            log.warning(
                "%s %s on %s failed: %s",
                execution.kind,
                call.action,
                decision.target,
                error,
                extra={**decision.fields(), "action": call.action, "kind": execution.kind},
            )
            outcome = Outcome(execution, None, error, time.time())
        else:
            log.info(
                "%s %s on %s succeeded",
                execution.kind,
                call.action,
                decision.target,
                extra={**decision.fields(), "action": call.action, "kind": execution.kind},
            )
            outcome = Outcome(execution, _jsonable(result), None, time.time())
        self.on_outcome(outcome)
        return outcome

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ the journal writer's side
    @staticmethod
    def record(outcomes: Sequence[Outcome]) -> Callable[[Journal], None]:
        """The journal rows of ``outcomes`` (run inside the writer's transaction).

        All in one commit: a crash between a failed execution and its decision's status would leave
        the decision 'executing' for ever, and every later decision for its rule, target and action
        dropped as a duplicate. A succeeded action starts its verification, counted from when the
        call returned (only observations after it verify the action).
        """

        def write(journal: Journal) -> None:
            failed = [o for o in outcomes if o.error is not None]
            ok = [o for o in outcomes if o.error is None]
            journal.finish_executions(
                [(o.execution.id, ExecutionStatus.FAILED, None, o.error) for o in failed]
                + [(o.execution.id, ExecutionStatus.SUCCEEDED, o.result, None) for o in ok]
            )
            verify = [o for o in ok if o.execution.kind == "action"]
            journal.settle_executions(
                [o.execution.id for o in failed]
                + [o.execution.id for o in ok if o.execution.kind != "action"]
            )
            journal.set_decision_statuses(
                [
                    (o.execution.decision.id, DecisionStatus.FAILED, o.error)
                    for o in failed
                    if o.execution.kind == "action"
                ]
                + [(o.execution.decision.id, DecisionStatus.VERIFYING, None) for o in verify]
            )
            journal.start_verifications(
                [
                    (
                        o.execution.decision.id,
                        o.execution.id,
                        o.returned,
                        deadline(o.execution.decision, o.returned),
                    )
                    for o in verify
                ]
            )

        return write

    def recorded(self, outcomes: Sequence[Outcome]) -> list[Note]:
        """After the commit: what listeners hear; a failed action is escalated."""
        notes: list[Note] = []
        for o in outcomes:
            execution = o.execution
            data = {**execution.decision.fields(), "kind": execution.kind, "action": execution.call.action}
            if o.error is None:
                notes.append(("executed", data))
                continue
            if execution.kind == "action":
                notes += self.escalate(execution.decision, f"action failed: {o.error}")
            notes.append(("action_failed", {**data, "error": o.error}))
        return notes

    def escalate(self, decision: Decision, why: str) -> list[Note]:
        """Tell a human: the engine's notification channels hear the ``escalated`` note, and the
        policy's own ``escalate_to`` webhook, when it names one, is called as an execution
        (journaled, at most once per decision)."""
        url = decision.verify.escalate_to if decision.verify else None
        log.warning(
            "escalation for %s (%s): %s",
            decision.id,
            f"policy webhook {url}"
            if url
            else "no webhook configured in the policy; notification channels hear it",
            why,
            extra=decision.fields(),
        )
        if url:
            payload = {
                "decision_id": decision.id,
                "service": decision.service,
                "target": decision.target,
                "action": decision.action,
                "policy": decision.policy,
                "rule": decision.rule,
                "reason": why,
            }
            self.follow_up(decision, "escalation", ActionCall("webhook", {"url": url, "payload": payload}))
        return [("escalated", {**decision.fields(), "reason": why})]

    def roll_back(self, decision: Decision, execution_id: str) -> None:
        """Run the decision's inverse, with what its action's result said would undo it."""
        assert decision.inverse is not None
        done = self.journal.execution(execution_id) or {}
        result = done.get("result")
        learned = result.get("inverse_params") if isinstance(result, dict) else None
        call = ActionCall(decision.inverse.action, {**decision.inverse.params, **(learned or {})})
        self.follow_up(decision, "rollback", call, status=DecisionStatus.ROLLED_BACK)

    def follow_up(
        self, decision: Decision, kind: str, call: ActionCall, *, status: str | None = None
    ) -> None:
        """Journal the execution first (at most once per decision and kind), then dispatch it."""
        journal = self.journal
        with journal.transaction():
            execution_id = journal.start_execution(
                decision.to_record(),
                kind=kind,
                action=call.action,
                params=call.params,
                idempotency_key=f"{decision.id}:{kind}",
            )
            if execution_id is None:
                return
            if status is not None:
                journal.set_decision_status(decision.id, status)
        self.dispatch(Execution(execution_id, decision, kind, call))


def deadline(decision: Decision, returned: float) -> float:
    """When the steady state must be back, for an action that returned at ``returned``."""
    return returned + (decision.verify.deadline_s if decision.verify else DEFAULT_DEADLINE_S)


def _jsonable(value: Any) -> Any:
    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict):
        value = as_dict()
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
