"""The policy stage: a tick's events through the compiled policies (durable-rules), in order.

Health changes first, then the anomalies: gating ("do not restart a service whose upstream is the
real culprit") must see every root of the tick before any victim is posted. The host marks every
posted service anomalous, so a service whose last row of the tick was normal is set healthy again
afterwards, or gating would silence its dependents for good. Ticks must reach ``ask`` one at a
time, in order; the engine and shadow replay both call it.

One event's failure costs only that event: a rule action that raises keeps the decisions the host
made before it (``PolicyRunError.decisions``), and any other error is noted and the next event is
posted.

The diagnosis stage (``engine.diagnosis.DiagnosisStage``) runs between event making and this one:
``TickEvents`` in, the same with a ``Diagnosis`` on each anomaly event out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from engine.records import AnomalyEvent, Decision
from engine.runtime.events import TickEvents

log = logging.getLogger(__name__)

Note = tuple[str, dict[str, Any]]  # (kind, data): what listeners and metrics hear about


@runtime_checkable
class PolicyEngine(Protocol):
    """The compiled policies as the engine drives them (``engine.policy.PolicyHost``).

    ``post`` returns the decision an event caused, or None; ``set_health`` keeps a service's health
    fact current for dependency gating. ``version`` names the policy set in the journal.
    """

    version: str

    def post(self, event: AnomalyEvent) -> Decision | None: ...
    def set_health(self, service: str, *, anomalous: bool) -> None: ...


@dataclass(frozen=True)
class Tick:
    """One tick on its way to the decider: its events and what the policies decided about them."""

    changes: list[AnomalyEvent]  # health changes
    events: list[AnomalyEvent]  # anomalies
    emitted: float  # perf_counter when the events were made (for latency)
    decided: list[Decision]
    notes: list[Note]
    asked: float = 0.0  # perf_counter when the policies were asked (0: not timed; for latency)


def ask(policies: PolicyEngine, tick: TickEvents) -> Tick:
    """The policies' decisions for one tick (module docstring); nothing here touches the journal."""
    asked = time.perf_counter()
    decided: list[Decision] = []
    notes: list[Note] = []
    for event in tick.changes:
        policies.set_health(event.service, anomalous=event.anomalous)
    for event in tick.events:
        try:
            decision = policies.post(event)
        except Exception as exc:
            kept = list(getattr(exc, "decisions", []))  # PolicyRunError keeps what was decided
            decided.extend(kept)
            log.error("policies failed on event %r of %r: %s", event.id, event.service, exc)
            notes.append(("policy_error", {"event_id": event.id, "error": str(exc)}))
            continue
        if decision is not None:
            decided.append(decision)
    posted = {event.service for event in tick.events}
    last = {event.service: event for event in tick.changes}
    for service, event in last.items():
        if service in posted and not event.anomalous:
            policies.set_health(service, anomalous=False)
    return Tick(tick.changes, tick.events, tick.emitted, decided, notes, asked)
