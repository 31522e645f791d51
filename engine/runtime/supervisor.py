"""The supervising stage: the kill switch, approvals and verification.

A pass (``step``) reads the kill switch from the journal (so ``selfheal pause`` works even against a
busy engine), expires approvals (expiry denies unless the policy says otherwise), starts approved
decisions, and checks every watched steady state against the latest observations. Verdicts are
not written here: they go to the journal writer with the rest of its commit (``record``), and a
verdict handed over is not given again until it is written, so a verdict is never journaled (nor a
rollback started) twice. A failed verification escalates and rolls back as its policy says; only
the kill switch and maintenance windows stop a rollback (rate limits and the circuit breaker would
keep a failed change in place, which is what the rollback undoes), and then a human is told.

Operators act here too: ``settle_approval`` and ``set_paused``, both journaled.

Replicas share the journal; each supervises only the targets whose partition it leases (``owns``):
the owner has the observations a verification needs, and one replica runs an approved decision.
An approval settled through any replica is run by the target's owner, the next owner after a
failover included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import RuntimeEngineError
from engine.records import Decision, Execution, VerifySpec
from engine.runtime import safeguards
from engine.runtime.decider import Decider
from engine.runtime.events import Observations
from engine.runtime.executor import DEFAULT_DEADLINE_S, Executor
from engine.runtime.journal import ApprovalStatus, DecisionStatus, Journal, TargetCounts
from engine.runtime.policies import Note
from engine.runtime.verify import SteadyState, steady_state

log = logging.getLogger(__name__)

PAUSE_KEY = "paused"
_ROLLBACK_GUARDS = ("kill_switch", "maintenance")
_NO_COUNTS = TargetCounts(None, 0, 0, 0, 0, 0)


class ApprovalRefused(RuntimeEngineError):
    """An approve/reject that cannot apply: unknown id, already settled, expired or not allowed."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


@dataclass(frozen=True)
class Verdict:
    """A verification's outcome, waiting for the journal writer."""

    verification: dict[str, Any]
    decision: Decision
    state: SteadyState
    verified: bool


@dataclass
class Pass:
    """What one supervision pass produced."""

    verdicts: list[Verdict] = field(default_factory=list)
    executions: list[Execution] = field(default_factory=list)  # approved decisions, started
    notes: list[Note] = field(default_factory=list)


class Supervisor:
    """Approvals, kill switch and verification over the journal and the engine's observations."""

    def __init__(
        self, journal: Journal, decider: Decider, observations: Observations, *, threshold: float
    ) -> None:
        self.journal = journal
        self.decider = decider
        self.observations = observations
        self.default_verify = VerifySpec(deadline_s=DEFAULT_DEADLINE_S, score_below=threshold)
        self.pending_approvals = 0
        self.oldest_pending_ts: float | None = None  # when the oldest pending request was made
        self._settling: dict[str, float] = {}  # verification id -> since when its steady state holds
        self._handed_over: set[str] = set()  # verdicts given to the writer, not yet journaled
        self.owns: Callable[[str], bool] | None = None  # a replica's targets (None: every target)

    @property
    def paused(self) -> bool:
        return self.decider.paused

    def step(self, now: float | None = None) -> Pass:
        """One pass: kill switch, approvals (expire, run approved, settle rejected), verifications."""
        now = time.time() if now is None else now
        journal = self.journal
        control = journal.control(PAUSE_KEY)
        self.decider.paused = bool(control and control["value"])
        out = Pass()
        waiting, oldest = 0, None
        owns = self.owns
        for row in journal.decisions_with_status([DecisionStatus.AWAITING_APPROVAL]):
            if owns is not None and not owns(row["target"]):
                continue
            approval = journal.approval_for(row["id"])
            if approval is None:
                continue
            status = approval["status"]
            if status == ApprovalStatus.PENDING and approval["expires_ts"] <= now:
                decision = Decision.from_record(row)
                if decision.approval.on_expiry == "approve":  # only when the policy says so explicitly
                    if journal.settle_approval(
                        approval["id"], ApprovalStatus.APPROVED, approver="expiry", reason="expired", now=now
                    ):
                        self._run(decision, out)
                elif journal.settle_approval(
                    approval["id"], ApprovalStatus.EXPIRED, approver=None, reason="expired", now=now
                ):
                    journal.set_decision_status(row["id"], DecisionStatus.DENIED, "approval expired")
                    out.notes.append(
                        ("approval_expired", {"decision_id": row["id"], "approval_id": approval["id"]})
                    )
            elif status == ApprovalStatus.PENDING:
                waiting += 1
                oldest = min(oldest or now, approval["created_ts"])
            elif status == ApprovalStatus.APPROVED:
                self._run(Decision.from_record(row), out)
            else:
                journal.set_decision_status(row["id"], DecisionStatus.DENIED, f"approval {status}")
        self.pending_approvals, self.oldest_pending_ts = waiting, oldest
        out.verdicts = self._verify(now)
        return out

    def _run(self, decision: Decision, out: Pass) -> None:
        started = self.decider.run_ready(decision)
        out.executions += started.executions
        out.notes += started.notes

    def _verify(self, now: float) -> list[Verdict]:
        """Every watched steady state; the verified and the overdue become verdicts."""
        out: list[Verdict] = []
        for verification, row in self.journal.watching_with_decisions():
            vid = verification["id"]
            if vid in self._handed_over:
                continue
            decision = Decision.from_record(row)
            if self.owns is not None and not self.owns(decision.target):
                continue
            spec = decision.verify or self.default_verify
            state = steady_state(
                spec,
                decision.target,
                since=verification["started_ts"],
                scores=self.observations.scores,
                metrics=self.observations.metrics,
            )
            if state.holds:
                first = self._settling.setdefault(vid, now)
                if now - first >= spec.settle_s:
                    out.append(Verdict(verification, decision, state, verified=True))
                continue
            self._settling.pop(vid, None)
            if now >= verification["deadline_ts"]:
                out.append(Verdict(verification, decision, state, verified=False))
        self._handed_over.update(v.verification["id"] for v in out)
        return out

    # ------------------------------------------------------------------ the journal writer's side
    @staticmethod
    def record(verdicts: Sequence[Verdict]) -> Callable[[Journal], None]:
        """The journal rows of ``verdicts`` (run inside the writer's transaction)."""

        def write(journal: Journal) -> None:
            journal.finish_verifications(
                [
                    (v.verification["id"], "verified" if v.verified else "failed", v.state.detail)
                    for v in verdicts
                ]
            )
            journal.set_decision_statuses(
                [
                    (v.decision.id, DecisionStatus.VERIFIED, None)
                    if v.verified
                    else (
                        v.decision.id,
                        DecisionStatus.VERIFICATION_FAILED,
                        f"steady state not back by the deadline: {v.state.detail}",
                    )
                    for v in verdicts
                ]
            )
            journal.settle_executions([v.verification["execution_id"] for v in verdicts])

        return write

    def returned(self, verdicts: Sequence[Verdict]) -> None:
        """The writer could not journal ``verdicts``: they will be handed over again."""
        for v in verdicts:
            self._handed_over.discard(v.verification["id"])

    def recorded(self, verdicts: Sequence[Verdict], executor: Executor) -> list[Note]:
        """After the commit: notes; a failed verification escalates and rolls back (module doc)."""
        notes: list[Note] = []
        for v in verdicts:
            vid = v.verification["id"]
            self._settling.pop(vid, None)
            self._handed_over.discard(vid)
            fields = v.decision.fields()
            detail = {**fields, "detail": v.state.detail}
            if v.verified:
                log.info(
                    "%s on %s verified: %s",
                    v.decision.action,
                    v.decision.target,
                    v.state.detail,
                    extra=fields,
                )
                notes.append(("verified", detail))
                continue
            log.warning(
                "%s on %s not verified: %s",
                v.decision.action,
                v.decision.target,
                v.state.detail,
                extra=fields,
            )
            notes.append(("verification_failed", detail))
            notes += self._after_failure(v, executor)
        return notes

    def _after_failure(self, v: Verdict, executor: Executor) -> list[Note]:
        decision = v.decision
        spec = decision.verify or self.default_verify
        rollback = "rollback" in spec.on_failure and decision.inverse is not None
        refusal = self._rollback_refusal(decision) if rollback else None
        if refusal is not None:
            reason = f"verification failed; rollback blocked by {refusal.safeguard}: {refusal.reason}"
            self.journal.set_decision_status(decision.id, DecisionStatus.BLOCKED, reason)
            notes: list[Note] = [("blocked", {"decision_id": decision.id, "safeguard": refusal.safeguard})]
            return notes + executor.escalate(decision, f"{reason} ({v.state.detail})")
        notes = []
        if "escalate" in spec.on_failure:
            notes += executor.escalate(decision, f"verification failed: {v.state.detail}")
        if rollback:
            executor.roll_back(decision, v.verification["execution_id"])
        return notes

    def _rollback_refusal(self, decision: Decision) -> safeguards.Verdict | None:
        verdict = safeguards.check(
            decision,
            _NO_COUNTS,
            now=time.time(),
            limits=safeguards.GlobalLimits(),
            paused=self.decider.paused,
            maintenance=self.decider.maintenance,
        )
        return None if verdict.allowed or verdict.safeguard not in _ROLLBACK_GUARDS else verdict

    # ------------------------------------------------------------------ operators
    def set_paused(self, paused: bool, *, actor: str, reason: str | None = None) -> Note:
        """The kill switch: journaled (it survives restarts) and applied at once."""
        self.journal.set_control(PAUSE_KEY, paused, actor=actor, reason=reason)
        self.decider.paused = paused
        log.log(  # paused is a degraded state worth a warning; resuming is back to normal
            logging.WARNING if paused else logging.INFO,
            "actions %s by %s%s",
            "paused" if paused else "resumed",
            actor,
            f": {reason}" if reason else "",
        )
        return ("paused" if paused else "resumed", {"actor": actor, "reason": reason})

    def settle_approval(
        self, approval_id: str, *, approve: bool, approver: str, reason: str | None, now: float | None = None
    ) -> tuple[dict[str, Any], Note]:
        """Approve or reject a pending request (the next pass runs an approved decision)."""
        now = time.time() if now is None else now
        journal = self.journal
        approval = journal.approval(approval_id)
        if approval is None:
            raise ApprovalRefused(
                f"no approval request {approval_id}",
                status=404,
                hint="list them with `selfheal approvals list`",
            )
        if approval["status"] != ApprovalStatus.PENDING:
            raise ApprovalRefused(f"approval {approval_id} is already {approval['status']}", status=409)
        if approval["expires_ts"] <= now:
            raise ApprovalRefused(f"approval {approval_id} has expired (expiry denies)", status=409)
        allowed = approval.get("allowed_approvers") or []
        if allowed and approver not in allowed:
            raise ApprovalRefused(
                f"{approver!r} may not approve this action",
                status=403,
                hint=f"approvers: {', '.join(allowed)}",
            )
        if not approve and not reason:
            raise ApprovalRefused("a rejection needs a reason", status=422, hint="pass --reason")
        status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
        if not journal.settle_approval(approval_id, status, approver=approver, reason=reason):
            raise ApprovalRefused(f"approval {approval_id} was settled meanwhile", status=409)
        out = journal.approval(approval_id)
        assert out is not None
        return out, ("approval_" + status, {"approval_id": approval_id, "approver": approver})
