"""The journal's side of the engine: deciding, executing and supervising, around one writer thread.

The scoring side hands ticks over (``submit``); this side owns everything that writes the journal:
- one writer thread, the journal's one hot-path writer: each commit holds the queued ticks'
  events and decisions (``engine.runtime.decider``) and the bookkeeping the other threads handed
  over (actuator outcomes, verification verdicts), then dispatches what it started. Separate
  writers queued on the journal lock in front of the decisions, which is what a dispatch waits for;
- a pool of actuator threads (``engine.runtime.executor``);
- a supervisor thread (``engine.runtime.supervisor``): kill switch, approvals, verification.
Operators' approvals, the kill switch, modes and alarm labels come in here too (and are heard).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from engine.records import Execution, Outcome
from engine.runtime.components import EngineComponents
from engine.runtime.config import EngineSettings
from engine.runtime.decider import Decider, Write
from engine.runtime.events import Observations
from engine.runtime.executor import Executor
from engine.runtime.journal import Journal
from engine.runtime.ladder import Modes, policy_names
from engine.runtime.lograte import Repeating
from engine.runtime.outcomes import label_event
from engine.runtime.policies import Note, Tick
from engine.runtime.recovery import recover
from engine.runtime.supervisor import Supervisor, Verdict

log = logging.getLogger(__name__)

SUPERVISE_SPACING_S = 0.05  # at most ~20 supervision passes per second
ACT_THREADS = 16  # actuator calls at once (more wait in the pool's queue)
BATCH_TICKS = 64  # ticks in one commit at most

Notify = Callable[[str, dict[str, Any]], None]
Latency = Callable[[str, float], None]
#: What ``latency`` is told (seconds), on the way from an anomaly event (``emitted``) to its action:
#: the policies' decisions handed over (``event_to_decided``: of it, ``event_to_policies`` until the
#: policies were asked, the diagnosis mostly, and ``policies`` their own time), their wait for the
#: writer thread to take them (``writer_wait``: the previous commit, the interpreter), the commit
#: that journals them (its SQL and one fsync; ``commit`` times every commit, ``decided_commit`` only
#: those holding a decision), journaled, each execution's wait from the hand-over to the actuator
#: pool until a pool thread runs (``actuator_wait``), and dispatched (that thread starts the call);
#: ``arrival_to_event`` is the scoring side's. The decided ones are timed for decided ticks only.
LATENCIES = (
    "arrival_to_event",
    "event_to_decided",
    "event_to_policies",
    "policies",
    "writer_wait",
    "commit",
    "decided_commit",
    "event_to_journaled",
    "actuator_wait",
    "event_to_dispatch",
)


def spawn(name: str, target: Callable[[], None], on_error: Callable[[str], None]) -> threading.Thread:
    """A daemon thread whose death is logged and counted, never silent."""

    def guarded() -> None:
        try:
            target()
        except Exception:
            log.exception("%s thread died", name)
            on_error(name)

    thread = threading.Thread(target=guarded, name=f"selfheal-{name}", daemon=True)
    thread.start()
    return thread


class Writer:
    """Deciding, executing and supervising over one journal; ``submit`` ticks, ``start``, ``stop``."""

    def __init__(
        self,
        journal: Journal,
        components: EngineComponents,
        settings: EngineSettings,
        observations: Observations,
        *,
        notify: Notify,
        latency: Latency,
        on_error: Callable[[str], None],
    ) -> None:
        self.journal, self.components, self.settings = journal, components, settings
        self._notify, self._latency, self._on_error = notify, latency, on_error
        limits = settings.limits.to_global()
        self.decider = Decider(
            journal,
            limits=limits,
            maintenance=[m.window() for m in settings.maintenance],
            approval_ttl_s=settings.approval_ttl_s,
            replicas=components.replicas,
            modes=Modes(settings.modes, known=policy_names(components.policies)),
        )
        self.executor = Executor(
            journal,
            components.actions,
            timeout_s=settings.action_timeout_s,
            threads=min(limits.max_concurrent, ACT_THREADS) + 2,
            on_start=self._dispatched,
            on_outcome=self._handed,
        )
        self.supervisor = Supervisor(
            journal, self.decider, observations, threshold=components.pipeline.threshold_
        )
        # (tick, when handed over) or None: only bookkeeping waits
        self._ticks: queue.Queue[tuple[Tick, float] | None] = queue.Queue()
        self._handed_over: dict[int, float] = {}  # id(execution) -> when the pool was handed it
        self._outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._verdicts: queue.SimpleQueue[Verdict] = queue.SimpleQueue()
        self._stop, self._drained, self._wake = threading.Event(), threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []
        self._passes = Repeating(log, "supervision passes")  # each fails while the journal is away
        self.submitted = self.written = 0  # ticks handed over / committed (the bus acks on these)

    @property
    def backlog(self) -> int:
        """Ticks waiting for the writer."""
        return self._ticks.qsize()

    def submit(self, tick: Tick) -> None:
        now = time.perf_counter()
        if tick.decided:
            self._latency("event_to_decided", now - tick.emitted)
            if tick.asked:
                self._latency("event_to_policies", tick.asked - tick.emitted)
                self._latency("policies", now - tick.asked)
        self.submitted += 1
        self._ticks.put((tick, now))

    def start(self) -> dict[str, bool]:
        """Recover from the journal, start the threads; returns each service's last known health."""
        s = self.settings
        self.decider.modes.load(self.journal)  # modes changed at run time survive a restart
        recovered = recover(
            self.journal,
            self.decider,
            self.executor,
            self.components.policies,
            stale_decision_s=s.stale_decision_s,
            replay_horizon_s=s.replay_horizon_s,
            owns=self.supervisor.owns,
        )
        self._threads = [
            spawn("write", self._write_loop, self._on_error),
            spawn("supervise", self._supervise_loop, self._on_error),
        ]
        self._run(recovered.executions, recovered.notes)
        return recovered.health

    def stop(self, timeout: float) -> bool:
        """Write what was queued, finish running actions; False when the writer would not stop (the
        journal then stays open: closing under a writer midway would lose its commit)."""
        self._stop.set()
        self._wake.set()
        writer, supervisor = self._threads or (None, None)
        if supervisor is not None:
            supervisor.join(timeout=10)
        self._drained.set()  # the writer finishes what the scorers queued, then exits
        if writer is not None:
            writer.join(timeout=timeout)
        self.executor.shutdown()
        if writer is not None and writer.is_alive():
            log.error(
                "the journal writer did not stop within %.0fs; journal %s left open",
                timeout,
                self.journal.path,
            )
            return False
        self._write([])  # outcomes of calls that returned after the writer stopped
        return True

    # ================================================================ the writer thread
    def _write_loop(self) -> None:
        while True:
            try:
                items = [self._ticks.get(timeout=0.1)]
            except queue.Empty:
                if self._drained.is_set():
                    return
                continue
            if items[0] is None and not self._drained.is_set():
                # Only bookkeeping waits: let it ride in the next tick's commit (at most one tick).
                with contextlib.suppress(queue.Empty):
                    items.append(self._ticks.get(timeout=self.settings.tick_s))
            while len(items) < BATCH_TICKS:
                try:
                    items.append(self._ticks.get_nowait())
                except queue.Empty:
                    break
            taken = time.perf_counter()
            ticks = []
            for item in items:
                if item is not None:
                    ticks.append(item[0])
                    if item[0].decided:
                        self._latency("writer_wait", taken - item[1])
            try:
                self._write(ticks)
            except Exception:  # deciding goes on
                log.exception("the journal writer failed on a batch")
                self._on_error("decide")
            finally:
                self.written += len(ticks)

    def _write(self, ticks: Sequence[Tick]) -> None:
        outcomes, verdicts = _drain(self._outcomes), _drain(self._verdicts)
        writes: list[Write] = []
        if outcomes:
            writes.append(Executor.record(outcomes))
        if verdicts:
            writes.append(Supervisor.record(verdicts))
        if not (ticks or writes):
            return
        began = time.perf_counter()
        committed = self.decider.commit(ticks, writes)
        now = time.perf_counter()
        self._latency("commit", now - began)
        if committed.decided:
            self._latency("decided_commit", now - began)
        for emitted in committed.decided:
            self._latency("event_to_journaled", now - emitted)
        # The commit's actions first: they wait on nothing else; escalations, rollbacks and what
        # listeners hear of the bookkeeping come after.
        self._run(committed.executions, committed.notes)
        if committed.unwritten:  # it rides in the next commit instead
            self._on_error("journal")
            for o in outcomes:
                self._outcomes.put(o)
            for v in verdicts:
                self._verdicts.put(v)
            outcomes, verdicts = [], []
        self._run((), self.executor.recorded(outcomes) + self.supervisor.recorded(verdicts, self.executor))
        if outcomes:
            self._wake.set()  # the supervisor starts watching the new steady states

    def _handed(self, outcome: Outcome) -> None:
        self._outcomes.put(outcome)
        self._ticks.put(None)

    def _dispatched(self, execution: Execution) -> None:
        now = time.perf_counter()
        handed = self._handed_over.pop(id(execution), None)
        if handed is not None:
            self._latency("actuator_wait", now - handed)
        if execution.emitted is not None:
            self._latency("event_to_dispatch", now - execution.emitted)
        data = {"decision_id": execution.decision.id, "kind": execution.kind, "action": execution.call.action}
        self._notify("dispatch", data)

    def _run(self, executions: Sequence[Execution], notes: Sequence[Note]) -> None:
        """Dispatch, then tell listeners (a listener is never on the path to an actuator)."""
        for execution in executions:
            self._handed_over[id(execution)] = time.perf_counter()
            self.executor.dispatch(execution)
        for kind, data in notes:
            self._notify(kind, data)

    # ================================================================ supervision and operators
    def _supervise_loop(self) -> None:
        interval = min(self.settings.verify_interval_s, 1.0)
        spacing = min(interval, SUPERVISE_SPACING_S)
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                done = self.supervisor.step()
                for verdict in done.verdicts:
                    self._verdicts.put(verdict)
                if done.verdicts:
                    self._ticks.put(None)
                self._run(done.executions, done.notes)
            except Exception:
                self._passes.failed("supervision pass failed")
                self._on_error("supervise")
            else:
                self._passes.worked()
            self._wake.wait(interval)
            # Wakes that come in a burst (every finished action wakes us) share one pass.
            self._stop.wait(max(0.0, spacing - (time.monotonic() - began)))
            self._wake.clear()

    def set_paused(self, paused: bool, *, actor: str, reason: str | None = None) -> None:
        """The kill switch: journaled (it survives restarts) and applied at once."""
        self._notify(*self.supervisor.set_paused(paused, actor=actor, reason=reason))

    def settle_approval(
        self, approval_id: str, *, approve: bool, approver: str, reason: str | None
    ) -> dict[str, Any]:
        """Approve or reject a pending request; the supervisor runs approved decisions at once."""
        try:
            row, note = self.supervisor.settle_approval(
                approval_id, approve=approve, approver=approver, reason=reason
            )
        finally:
            self._wake.set()  # an expired request is denied at once
        self._notify(*note)
        return row

    def label_event(self, event_id: str, label: str, *, actor: str, reason: str | None) -> dict[str, Any]:
        """An operator's false / true alarm: journaled, then heard, as the kill switch is."""
        row = label_event(self.journal, event_id, label, actor=actor, reason=reason)
        self._notify("labeled", row)
        return row

    def set_mode(
        self, policy: str, service: str | None, mode: str, *, actor: str, reason: str | None
    ) -> dict[str, Any]:
        """A step on the autonomy ladder: journaled, applied, then heard."""
        self.decider.modes.set(self.journal, policy, service, mode, actor=actor, reason=reason)
        row = {"policy": policy, "service": service, "mode": mode, "actor": actor, "reason": reason}
        self._notify("mode_changed", row)
        return row


def _drain(q: queue.SimpleQueue[Any]) -> list[Any]:
    out = []
    with contextlib.suppress(queue.Empty):
        while True:
            out.append(q.get_nowait())
    return out
