"""``PolicyHost``: the one wrapper around a durable-rules Host that the engine uses.

It owns the durable-rules traps (see DESIGN.md) so that nothing else has to:

- every message gets a unique id (durable-rules dedups on content/ids);
- an event that matches no rule raises ``MessageNotHandledException``: reported as no decision;
- an action that raises does not raise from ``post``; the error lands in the state as a string:
  the host detects it, clears it, and raises ``PolicyRunError`` (a ``PolicyError``, the original
  exception chained) whose ``decisions`` keep whatever was decided before the failure: one bad rule
  or event never makes the host forget a decision it already made (``post_tick`` posts every event
  of the tick, then raises once with all decisions and all errors);
- facts are bounded: one health fact per service, at most ``history_ticks`` history facts per
  service (plus the first anomaly of the current streak when a rule uses ``persistence.for``);
- rulesets cannot be unregistered: each PolicyHost owns a fresh Host and a uniquely named ruleset
  (registered from a deep copy: durable-rules mutates the definition it is given);
- durable-rules' background dispatch threads are not started: actions run inside ``post`` (we use
  no durable-rules timers), so a decision is known when ``post`` returns.

The rule action never acts on the world: it renders a ``Decision`` (action, params, risk, the
safeguards, verification and approval that apply) for the engine to enforce and execute.
``snapshot()``/``restore()`` carry health and history across an engine restart.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from durable.engine import Host, MessageNotHandledException

from engine.errors import EngineError, PolicyError
from engine.ids import hex_id
from engine.policy.compiler import SINK_RULE, CompiledPolicySet, compile_policies
from engine.policy.events import HEALTH_TYPE, HISTORY_TYPE, AnomalyEvent, HealthFact
from engine.policy.loader import BoundRule, PolicySet
from engine.policy.model import Approval, InverseSpec, Safeguards, Verify
from engine.policy.templates import render

log = logging.getLogger(__name__)


class PolicyRunError(PolicyError):
    """Rule actions failed while posting; ``decisions`` holds every decision made all the same.

    Why an exception that carries results: a tick posts many events, and the engine must enforce
    the decisions of the events that worked even when another event's rule is broken, without
    losing the error. Callers that catch ``PolicyError`` keep working; callers that want the
    decisions read ``exc.decisions`` (and ``exc.errors``: one ``PolicyError`` per failed event).
    """

    def __init__(
        self,
        message: str,
        *,
        decisions: Sequence[Decision] = (),
        errors: Sequence[PolicyError] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.decisions: list[Decision] = list(decisions)
        self.errors: list[PolicyError] = list(errors) or [self]


@dataclass(frozen=True)
class Decision:
    """What a rule decided about one anomaly event. The engine enforces safeguards and approval."""

    id: str
    rule_id: str
    policy: str
    policy_version: str
    policy_fingerprint: str
    event: AnomalyEvent
    target: str
    action: str
    params: dict[str, Any]
    risk: str
    inverse: InverseSpec | None
    requires_approval: bool
    safeguards: Safeguards
    verify: Verify
    approval: Approval
    evidence: tuple[str, ...] = field(default=())
    target_replicas: int | None = None

    @property
    def max_replicas_at_once(self) -> int | None:
        """The blast radius in replicas for the target (None when the target has no topology entry)."""
        if self.target_replicas is None:
            return None
        return self.safeguards.max_replicas_at_once(self.target_replicas)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (for the journal and ``selfheal rules test --json``)."""
        return {
            "id": self.id,
            "rule": self.rule_id,
            "policy": self.policy,
            "policy_version": self.policy_version,
            "policy_fingerprint": self.policy_fingerprint,
            "event": self.event.model_dump(),
            "target": self.target,
            "action": self.action,
            "params": self.params,
            "risk": self.risk,
            "inverse": self.inverse.model_dump() if self.inverse else None,
            "requires_approval": self.requires_approval,
            "safeguards": self.safeguards.model_dump(),
            "verify": self.verify.model_dump(),
            "approval": self.approval.model_dump(),
            "evidence": list(self.evidence),
            "target_replicas": self.target_replicas,
        }


class _Host(Host):
    """A durable-rules Host whose rule actions are our callbacks and which starts no timer threads."""

    def __init__(self, owner: PolicyHost) -> None:
        self._owner = owner
        super().__init__()

    def get_action(self, action_name: str) -> Any:
        return self._owner._callback(action_name)

    def _run(self) -> None:  # durable-rules timers are unused; actions run inside post()
        return None


@dataclass
class HostStats:
    posted: int = 0
    decided: int = 0
    unmatched: int = 0
    errors: int = 0


class PolicyHost:
    """Post anomaly events, keep health facts current, and get decisions back.

    Not thread-safe by design of durable-rules; every public method takes one lock.
    """

    def __init__(self, policies: PolicySet | CompiledPolicySet, *, tick_seconds: float = 60.0) -> None:
        self.compiled = policies if isinstance(policies, CompiledPolicySet) else compile_policies(policies)
        self.policy_set = self.compiled.policy_set
        self.tick_seconds = tick_seconds
        self.name = f"selfheal_{self.policy_set.fingerprint[:12]}_{uuid.uuid4().hex[:8]}"
        self.stats = HostStats()
        self._lock = threading.RLock()
        self._rules: dict[str, BoundRule] = {b.id: b for b in self.policy_set.rules}
        self._fired: list[Decision] = []
        self._errors: list[BaseException] = []
        self._current: AnomalyEvent | None = None
        self._health: dict[str, tuple[HealthFact, dict[str, Any] | None]] = {}
        self._history: dict[str, deque[dict[str, Any]]] = {}
        self._anchor: dict[str, dict[str, Any]] = {}
        self._host = _Host(self)
        # durable-rules deletes "run" from the definition it is given: hand it a copy
        self._host.register_rulesets({self.name: copy.deepcopy(self.compiled.rules)})

    # ----------------------------------------------------------------- durable-rules callbacks
    def _callback(self, durable_rule: str) -> Any:
        if durable_rule == SINK_RULE:
            return lambda c: None
        rule_id, _service = self.compiled.index[durable_rule]
        bound = self._rules[rule_id]

        def fire(c: Any) -> None:
            try:
                event = self._current
                assert event is not None and event.id == c.e.event_id, "decision for another event"
                evidence = []
                while (fact := getattr(c, f"h{len(evidence) + 1}")) is not None:
                    evidence.append(str(fact.event_id))
                self._fired.append(self._decide(bound, event, tuple(evidence)))
            except BaseException as exc:
                self._errors.append(exc)
                raise

        return fire

    def _decide(self, bound: BoundRule, event: AnomalyEvent, evidence: tuple[str, ...]) -> Decision:
        from engine.actions import get_action

        rule = bound.rule
        spec = self.policy_set.topology.services.get(event.service)
        scope = {**event.fields(), "topology": spec.model_dump() if spec else {}}
        target = str(render(rule.then.target, scope))
        target_spec = self.policy_set.topology.services.get(target)
        params = get_action(rule.then.action).validate(render(rule.then.params, scope))
        inverse = bound.inverse
        if inverse is not None and inverse.params:
            inverse = InverseSpec(action=inverse.action, params=render(inverse.params, scope))
        return Decision(
            id=hex_id(),
            rule_id=bound.id,
            policy=bound.policy.policy,
            policy_version=bound.policy.version,
            policy_fingerprint=self.policy_set.fingerprint,
            event=event,
            target=target,
            action=rule.then.action,
            params=params,
            risk=bound.risk,
            inverse=inverse,
            requires_approval=bound.requires_approval,
            safeguards=rule.safeguards,
            verify=rule.verify,
            approval=rule.approval,
            evidence=evidence,
            target_replicas=target_spec.replicas if target_spec else None,
        )

    # ----------------------------------------------------------------------------- public API
    def post(self, event: AnomalyEvent | Mapping[str, Any]) -> Decision | None:
        """Post one anomaly event; the decision it caused, or None (no rule matched or gated)."""
        evt = event if isinstance(event, AnomalyEvent) else AnomalyEvent.model_validate(event)
        with self._lock:
            self.stats.posted += 1
            if evt.service in self.policy_set.topology.services:
                self._set_health(evt.service, anomalous=True, maintenance=None)
            message = evt.message(tick_seconds=self.tick_seconds)
            self._fired.clear()
            self._errors.clear()
            self._current = evt
            try:
                state = self._host.post(self.name, message)
            except MessageNotHandledException:
                self.stats.unmatched += 1
                log.debug("event %s for %s matched no rule", evt.id, evt.service)
                return None
            finally:
                self._current = None
            decision = self._fired[0] if self._fired else None
            if decision is not None:
                self.stats.decided += 1
                self._clear_history(evt.service)
            self._raise_action_error(state, evt, self._fired)
            if decision is None:
                self.stats.unmatched += 1
                self._remember(message)
            return decision

    def post_tick(self, events: Sequence[AnomalyEvent], healthy: Iterable[str] = ()) -> list[Decision]:
        """One scoring tick: mark every anomalous service first (so gating sees the root), then post.

        Every event is posted even when an earlier one fails. When any failed, raises one
        ``PolicyRunError`` after the last event: ``.decisions`` are all the decisions of the tick
        (what this method would have returned), ``.errors`` one PolicyError per failed event.
        """
        decisions: list[Decision] = []
        errors: list[PolicyError] = []
        with self._lock:
            for service in healthy:
                self.set_health(service, anomalous=False)
            for evt in events:
                if evt.service in self.policy_set.topology.services:
                    self._set_health(evt.service, anomalous=True, maintenance=None)
            for evt in events:
                try:
                    decision = self.post(evt)
                except PolicyRunError as exc:
                    decisions.extend(exc.decisions)
                    errors.append(exc)
                except Exception as exc:  # durable-rules internals: keep the tick's other decisions
                    self.stats.errors += 1
                    wrapped = PolicyError(f"posting event {evt.id} ({evt.service}) failed: {exc}")
                    wrapped.__cause__ = exc
                    errors.append(wrapped)
                else:
                    if decision is not None:
                        decisions.append(decision)
        if errors:
            raise PolicyRunError(
                f"{len(errors)} of {len(events)} event(s) of the tick failed; "
                f"{len(decisions)} decision(s) kept in .decisions: " + "; ".join(e.message for e in errors),
                decisions=decisions,
                errors=errors,
                hint="fix the rule's then section; `selfheal rules test` reproduces it",
            ) from errors[0]
        return decisions

    def set_health(self, service: str, *, anomalous: bool, maintenance: bool | None = None) -> None:
        """Keep the health fact of ``service`` current. A healthy tick ends its anomaly streak."""
        with self._lock:
            if service not in self.policy_set.topology.services:
                log.debug("health of unknown service %s ignored", service)
                return
            self._set_health(service, anomalous=anomalous, maintenance=maintenance)
            if not anomalous:
                self._clear_history(service)

    def health(self) -> dict[str, HealthFact]:
        with self._lock:
            return {s: fact for s, (fact, _) in self._health.items()}

    def snapshot(self) -> dict[str, Any]:
        """Health and anomaly history, JSON-ready, for the engine to persist."""
        with self._lock:
            return {
                "fingerprint": self.policy_set.fingerprint,
                "health": [fact.model_dump() for fact, _ in self._health.values()],
                "history": {s: list(q) for s, q in self._history.items()},
                "anchor": dict(self._anchor),
            }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Re-assert a snapshot's facts into this (fresh) host."""
        with self._lock:
            for raw in snapshot.get("health", []):
                fact = HealthFact.model_validate(raw)
                self.set_health(fact.service, anomalous=fact.anomalous, maintenance=fact.maintenance)
            for service, anchor in snapshot.get("anchor", {}).items():
                self._assert(anchor)
                self._anchor[service] = anchor
            for service, items in snapshot.get("history", {}).items():
                queue = self._history.setdefault(service, deque())
                anchor = self._anchor.get(service)
                for item in items:
                    if anchor is not None and item.get("id") == anchor.get("id"):
                        queue.append(anchor)
                    elif self._assert(item):
                        queue.append(item)

    def facts(self) -> list[dict[str, Any]]:
        """The facts durable-rules holds right now (for tests and debugging)."""
        with self._lock:
            return list(self._host.get_facts(self.name))

    # ------------------------------------------------------------------------------- internals
    def _raise_action_error(self, state: Any, event: AnomalyEvent, fired: Sequence[Decision]) -> None:
        """Raise PolicyRunError if a rule action failed for ``event``, keeping what ``fired``."""
        text = state.get("exception") if isinstance(state, dict) else None
        if not text and not self._errors:
            return
        self.stats.errors += 1
        cleaned = {k: v for k, v in (state or {}).items() if k != "exception"}
        if cleaned:
            self._host.update_state(self.name, cleaned)
        cause = self._errors[0] if self._errors else None
        if isinstance(cause, EngineError):
            message = f"policy action failed for event {event.id} ({event.service}): {cause}"
        else:
            message = f"policy action failed for event {event.id} ({event.service}): {text or cause}"
        if fired:
            message += f" (decision(s) of {', '.join(d.rule_id for d in fired)} kept in .decisions)"
        raise PolicyRunError(
            message,
            decisions=list(fired),
            hint="fix the rule's then section; `selfheal rules test` reproduces it",
        ) from cause

    def _assert(self, fact: dict[str, Any]) -> bool:
        try:
            self._host.assert_fact(self.name, fact)
        except MessageNotHandledException:
            return False
        return True

    def _retract(self, fact: dict[str, Any]) -> None:
        with contextlib.suppress(MessageNotHandledException):
            self._host.retract_fact(self.name, fact)

    def _set_health(self, service: str, *, anomalous: bool, maintenance: bool | None) -> None:
        old = self._health.get(service)
        keep_maintenance = old[0].maintenance if old else False
        fact = HealthFact(
            service=service,
            anomalous=anomalous,
            maintenance=keep_maintenance if maintenance is None else maintenance,
        )
        if old is not None and old[0] == fact:
            return
        if old is not None and old[1] is not None:
            self._retract(old[1])
        message = {"t": HEALTH_TYPE, "id": hex_id(), **fact.model_dump()}
        self._health[service] = (fact, message if self._assert(message) else None)

    def _remember(self, message: dict[str, Any]) -> None:
        """Keep this anomaly as history for persistence rules (bounded per service)."""
        if not self.compiled.history_ticks and not self.compiled.keeps_anchor:
            return
        service = message["service"]
        fact = {**message, "t": HISTORY_TYPE, "id": f"h-{message['id']}"}
        if not self._assert(fact):
            return
        queue = self._history.setdefault(service, deque())
        queue.append(fact)
        if self.compiled.keeps_anchor and service not in self._anchor:
            self._anchor[service] = fact
        oldest = fact["tick"] - self.compiled.history_ticks
        while queue and (queue[0]["tick"] <= oldest or len(queue) > max(self.compiled.history_ticks, 1)):
            old = queue.popleft()
            if self._anchor.get(service) is not old:
                self._retract(old)

    def _clear_history(self, service: str) -> None:
        for fact in self._history.pop(service, deque()):
            if self._anchor.get(service) is not fact:
                self._retract(fact)
        anchor = self._anchor.pop(service, None)
        if anchor is not None:
            self._retract(anchor)
