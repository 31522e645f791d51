"""The deciding stage (the enforcer): decisions through the safeguards, into the journal, one commit.

``enact`` is the pure core: given what the journal says (safeguard counts, remedies under way, the
kill switch, maintenance windows), which decisions execute now, which wait for an approval, and
which a safeguard blocks (and which one, for the journal's reason). Counts are kept current while
a batch is enacted, so two decisions of one batch never both take the last free slot. One
incident, one action: a decision for the same rule, target and action as one waiting, running or
being verified is dropped and counted as a duplicate.

A decision refused only for want of a free slot (``max_concurrent``: of its rule or of the engine)
is journaled as blocked and waits: the policies have already spent its evidence (a persistence
count starts again after a decision), so dropping it would leave a second fault of the same kind
unremedied while the first one's action is verified. ``Decider`` tries it again at every commit,
once a slot is free, as a new decision whose journal row names the blocked one (and the blocked
row names its retry); it gives up after the decision's approval TTL (the time a decision may wait
for a human may also be spent waiting for a slot), or when a newer decision for the same remedy
takes its place. Waiting decisions live in memory: after a crash the journal says "blocked".

``Decider`` is the journal's one hot-path writer: one transaction per batch holds the ticks'
events, their decisions, approval requests and execution rows (status 'started'), and the
bookkeeping other stages hand over (actuator outcomes, verification verdicts); one fsync'd commit
*before* any actuator is called. After a crash a 'started' execution is reported, never repeated,
and its idempotency key refuses a second attempt.

The safeguard counts are read inside that transaction under the journal's decision lock
(``Journal.lock_decisions``), so replicas sharing a PostgreSQL journal decide one at a time: a
global limit (actions an hour, in flight, blast radius) one reads is not taken by another before
the first commits.

One bad item never costs the others: when a batch cannot be written (a value SQLite refuses, say),
it is written again event by event, each with its decisions, and only the items that still fail
are refused (logged, counted, told to listeners).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from engine.records import ActionCall, Decision, Execution, new_id
from engine.runtime import safeguards
from engine.runtime.executor import deadline
from engine.runtime.journal import DecisionStatus, Journal, SafeguardCounts
from engine.runtime.ladder import Modes
from engine.runtime.lograte import Repeating
from engine.runtime.policies import Note, Tick

log = logging.getLogger(__name__)

Write = Callable[[Journal], None]  # bookkeeping another stage hands over, run inside the commit
Key = tuple[str, str, str]  # (target, rule, action): one remedy
SLOT_SAFEGUARDS = frozenset({"max_concurrent"})  # refusals that end when an action in flight settles
WAITS = "; waits for a free slot"  # the blocked row's reason, while its decision waits


@dataclass
class Context:
    """What the safeguards of a batch of decisions see (kept current as the batch is enacted)."""

    now: float
    counts: SafeguardCounts
    active: set[Key]
    paused: bool
    limits: safeguards.GlobalLimits
    maintenance: Sequence[safeguards.MaintenanceWindow] = ()
    replicas: Callable[[str], int] = lambda target: 1
    mode: Callable[[str, str], str] = lambda policy, service: "auto"  # the autonomy ladder


@dataclass
class Enactment:
    """The journal rows a batch of decisions will write, and what listeners are told after."""

    records: list[tuple[Decision, str, str | None]] = field(default_factory=list)
    approvals: list[Decision] = field(default_factory=list)
    starts: list[tuple[Decision, float | None]] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    observed: list[tuple[Key, Decision]] = field(default_factory=list)  # would have run (observe mode)
    waiting: list[tuple[Decision, str]] = field(default_factory=list)  # refused for want of a slot, reason


def verdict(decision: Decision, ctx: Context) -> safeguards.Verdict:
    """May ``decision`` act now, by the safeguards (``engine.runtime.safeguards.check``)?"""
    return safeguards.check(
        decision,
        ctx.counts.for_target(decision.target, decision.rule),
        now=ctx.now,
        limits=ctx.limits,
        paused=ctx.paused,
        replicas=ctx.replicas(decision.target),
        maintenance=ctx.maintenance,
    )


def enact(decisions: Sequence[tuple[Decision, float | None]], ctx: Context) -> Enactment:
    """Decisions (with when their event was made) through the safeguards, in order (module doc)."""
    out = Enactment()
    for decision, emitted in decisions:
        key = (decision.target, decision.rule, decision.action)
        if key in ctx.active:
            out.notes.append(("duplicate", {"decision_id": decision.id}))
            continue
        v = verdict(decision, ctx)
        if not v.allowed:
            reason = f"{v.safeguard}: {v.reason}"
            if v.safeguard in SLOT_SAFEGUARDS:
                out.waiting.append((decision, reason))
                reason += WAITS
            out.records.append((decision, DecisionStatus.BLOCKED, reason))
            out.notes.append(("blocked", {"decision_id": decision.id, "safeguard": v.safeguard}))
            continue
        ctx.active.add(key)
        mode = ctx.mode(decision.policy, decision.service)
        if mode == "observe":
            reason = f"observe mode: would run {decision.action} on {decision.target}"
            out.records.append((decision, DecisionStatus.OBSERVED, reason))
            out.notes.append(("observed", decision.fields()))
            out.observed.append((key, decision))
            continue
        if mode == "suggest" and not decision.approval.required:
            decision = replace(decision, approval=replace(decision.approval, required=True))
        if decision.approval.required:
            out.records.append((decision, DecisionStatus.AWAITING_APPROVAL, None))
            out.approvals.append(decision)
            continue
        # A new decision's idempotency key cannot have been used: it goes straight to 'executing'.
        out.records.append((decision, DecisionStatus.EXECUTING, None))
        out.starts.append((decision, emitted))
        ctx.counts.started(decision.target, decision.rule, decision.replicas, ctx.now)
    return out


@dataclass(frozen=True)
class Waiting:
    """A decision blocked for want of a slot: its journaled reason, and until when it may wait."""

    decision: Decision
    reason: str
    until: float


@dataclass
class Committed:
    """What one commit made durable: executions to dispatch now, and notes for listeners."""

    executions: list[Execution] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    decided: list[float] = field(default_factory=list)  # emitted (perf_counter) of each decision journaled
    unwritten: bool = False  # the bookkeeping could not be written: hand it over again

    def merge(self, other: Committed) -> None:
        self.executions += other.executions
        self.notes += other.notes
        self.decided += other.decided


class Decider:
    """The journal writer's core: ``commit`` a batch of ticks with the bookkeeping handed over."""

    def __init__(
        self,
        journal: Journal,
        *,
        limits: safeguards.GlobalLimits,
        maintenance: Sequence[safeguards.MaintenanceWindow] = (),
        approval_ttl_s: float = 900.0,
        replicas: Callable[[str], int] = lambda target: 1,
        modes: Modes | None = None,
    ) -> None:
        self.journal = journal
        self.modes = modes or Modes()
        self._observing: dict[Key, float] = {}  # observed remedies: until when a repeat is a duplicate
        self._waiting: dict[Key, Waiting] = {}  # decisions blocked for want of a slot (module doc)
        self.limits = limits
        self.maintenance = list(maintenance)
        self.approval_ttl_s = approval_ttl_s
        self.replicas = replicas
        self.paused = False  # the kill switch, as the supervisor last read it from the journal
        self._commits = Repeating(log, "journal commits")  # every one fails while the journal is away
        self._refused = Repeating(log, "journaling events one by one")

    def context(self, decisions: Sequence[Decision], now: float | None = None) -> Context:
        """The safeguard state for ``decisions``, read from the journal in one statement."""
        now = time.time() if now is None else now
        cap = 1 + max(
            [self.limits.max_actions_per_hour]
            + [max(d.safeguards.max_per_hour or 0, d.safeguards.max_per_hour_global or 0) for d in decisions]
        )
        counts, active = self.journal.decision_context(
            [d.target for d in decisions], [d.rule for d in decisions if d.rule], now=now, cap=cap
        )
        if self._observing:  # an observed remedy is "under way" until its verification deadline
            self._observing = {k: until for k, until in self._observing.items() if until > now}
            active |= self._observing.keys()
        return Context(
            now, counts, active, self.paused, self.limits, self.maintenance, self.replicas, self.modes.of
        )

    def commit(self, ticks: Sequence[Tick], writes: Sequence[Write] = ()) -> Committed:
        """Journal ``ticks`` and run ``writes`` in one transaction (one fsync).

        Never loses a tick to another item's failure (module docstring); when the bookkeeping
        (``writes``) cannot be written, ``unwritten`` says so and the caller hands it over again.
        """
        try:
            committed = self._commit(ticks, writes)
        except Exception:
            self._commits.failed(
                "journaling %d tick(s) with %d bookkeeping write(s) failed", len(ticks), len(writes)
            )
        else:
            self._commits.worked()
            return committed
        done = Committed()
        if writes:
            try:
                done = self._commit([], writes)
            except Exception:
                done.unwritten = True
        for unit in _units(ticks):
            try:
                done.merge(self._commit([unit], ()))
                self._refused.worked()
            except Exception as exc:
                event = (unit.events or unit.changes)[0]
                self._refused.failed(
                    "event %r (service %r) could not be journaled: %s", event.id, event.service, exc
                )
                done.notes.append(("journal_refused", {"event_id": event.id, "error": str(exc)}))
        return done

    def _commit(self, ticks: Sequence[Tick], writes: Sequence[Write]) -> Committed:
        journal = self.journal
        out = Committed(notes=[n for tick in ticks for n in tick.notes])
        rows = []
        for tick in ticks:
            rows += [({**e.model_dump(), "id": f"{e.id}-h"}, "health") for e in tick.changes]
            rows += [(e.model_dump(), "anomaly") for e in tick.events]
        decided = [(d, tick.emitted) for tick in ticks for d in tick.decided]
        if not (rows or decided or writes or self._waiting):
            return out
        with journal.transaction():
            journal.record_events(rows, ts=time.time())
            for write in writes:  # settled actions first: they free the slots decisions wait for
                write(journal)
            for d, _ in decided:  # a newer decision for the same remedy takes a waiting one's place
                self._waiting.pop((d.target, d.rule, d.action), None)
            if decided or self._waiting:
                journal.lock_decisions()  # replicas: the counts hold until this commit (module doc)
            retried = self._retries(out.notes)
            if decided or retried:
                everything = [(d, None) for d, _ in retried] + list(decided)  # a retry has no emit time
                ctx = self.context([d for d, _ in everything])
                enactment = enact(everything, ctx)
                for key, d in enactment.observed:
                    self._observing[key] = deadline(d, ctx.now)
                for d, reason in enactment.waiting:
                    ttl = d.approval.ttl_s or self.approval_ttl_s
                    self._waiting[(d.target, d.rule, d.action)] = Waiting(d, reason, ctx.now + ttl)
                retry_of = {d.id: blocked for d, blocked in retried}
                enactment.records = [
                    (d, status, reason or (f"retry of {retry_of[d.id]}" if d.id in retry_of else None))
                    for d, status, reason in enactment.records
                ]
                out.executions = self._journal(enactment)
                out.notes += enactment.notes
                out.decided = [emitted for _, emitted in decided]
        return out

    @property
    def waiting(self) -> list[Decision]:
        """Decisions blocked for want of a free slot, waiting to be tried again (oldest first)."""
        return [w.decision for w in self._waiting.values()]

    def _retries(self, notes: list[Note]) -> list[tuple[Decision, str]]:
        """Waiting decisions whose slot is free now, each as a new decision naming the blocked one;
        those past their wait are given up (journaled on the blocked row, told to listeners)."""
        if not self._waiting:
            return []
        now = time.time()
        ctx = self.context([w.decision for w in self._waiting.values()], now)
        out: list[tuple[Decision, str]] = []  # (retry, the blocked decision's id)
        updates: list[tuple[str, str, str | None]] = []
        for key, w in list(self._waiting.items()):
            if now >= w.until:
                del self._waiting[key]
                updates.append((w.decision.id, DecisionStatus.BLOCKED, f"{w.reason}; gave up waiting"))
                notes.append(("wait_expired", {"decision_id": w.decision.id}))
                continue
            v = verdict(w.decision, ctx)
            if not v.allowed and v.safeguard in SLOT_SAFEGUARDS:
                continue  # still no slot
            del self._waiting[key]
            retry = replace(w.decision, id=new_id("dec"))
            updates.append((w.decision.id, DecisionStatus.BLOCKED, f"{w.reason}; retried as {retry.id}"))
            notes.append(("retried", {"decision_id": w.decision.id, "retry_id": retry.id}))
            out.append((retry, w.decision.id))
        if updates:
            self.journal.set_decision_statuses(updates)
        return out

    def _journal(self, enactment: Enactment) -> list[Execution]:
        """A batch's decisions, approval requests and executions: a few multi-row statements."""
        journal = self.journal
        record = {d.id: d.to_record() for d, _, _ in enactment.records}  # once a decision: it costs
        journal.record_decisions([(record[d.id], status, reason) for d, status, reason in enactment.records])
        for decision in enactment.approvals:
            approval_id = journal.create_approval(
                decision.id,
                ttl_s=decision.approval.ttl_s or self.approval_ttl_s,
                allowed_approvers=decision.approval.approvers,
            )
            enactment.notes.append(
                ("approval_requested", {"decision_id": decision.id, "approval_id": approval_id})
            )
        ids = journal.start_new_executions(
            [(record[d.id], f"{d.id}:action", d.replicas) for d, _ in enactment.starts]
        )
        return [
            Execution(eid, d, "action", _call(d), emitted)
            for (d, emitted), eid in zip(enactment.starts, ids, strict=True)
        ]

    def run_ready(self, decision: Decision) -> Committed:
        """Start a journaled decision that is cleared to run (approved, or recovered after a crash):
        the safeguards again, then its execution row, committed before the call. Nothing to
        dispatch when a safeguard blocks it or it already ran (its idempotency key was used)."""
        journal = self.journal
        with journal.transaction():
            journal.lock_decisions()
            v = verdict(decision, self.context([decision]))
            if not v.allowed:
                journal.set_decision_status(decision.id, DecisionStatus.BLOCKED, f"{v.safeguard}: {v.reason}")
                return Committed(notes=[("blocked", {"decision_id": decision.id, "safeguard": v.safeguard})])
            journal.set_decision_status(decision.id, DecisionStatus.READY)
            execution_id = journal.start_execution(
                decision.to_record(),
                kind="action",
                action=decision.action,
                params=decision.params,
                idempotency_key=f"{decision.id}:action",
                replicas=decision.replicas,
            )
            if execution_id is None:
                log.warning("decision %s was already executed; not executing it again", decision.id)
                return Committed()
            journal.set_decision_status(decision.id, DecisionStatus.EXECUTING)
        return Committed([Execution(execution_id, decision, "action", _call(decision))])


def _call(decision: Decision) -> ActionCall:
    return ActionCall(decision.action, decision.params)


def _units(ticks: Sequence[Tick]) -> list[Tick]:
    """Each event of ``ticks`` alone, with the decisions it caused (the first keeps the tick's notes)."""
    out: list[Tick] = []
    for tick in ticks:
        notes = list(tick.notes)
        for event in tick.changes:
            out.append(Tick([event], [], tick.emitted, [], notes))
            notes = []
        for event in tick.events:
            mine = [d for d in tick.decided if d.event_id == event.id]
            out.append(Tick([], [event], tick.emitted, mine, notes))
            notes = []
    return out
