"""``PolicyHost``: the one wrapper around a durable-rules Host that the engine uses.

It owns the durable-rules traps (see DESIGN.md) so that nothing else has to:

- every message gets a unique id (durable-rules dedups on content/ids);
- an event that matches no rule raises ``MessageNotHandledException``: reported as no decision;
- an action that raises does not raise from ``post``; the error lands in the state as a string:
  the host detects it, clears it, and raises ``PolicyRunError`` (a ``PolicyError``, the original
  exception chained) whose ``decisions`` keep whatever was decided before the failure: one bad rule
  never makes the host forget a decision it already made;
- facts are bounded: one health fact per service, at most ``history_ticks`` history facts per
  service (plus the first anomaly of the current streak when a rule uses ``persistence.for``);
- a healthy tick ends a service's streak (``persistence.for``) but not its history: "5 of the
  last 10 ticks" counts anomalous ticks with healthy ones between them (a weak fault flickers
  at the detector's threshold; clearing on every healthy tick made it "5 in a row");
- rulesets cannot be unregistered: each PolicyHost owns a fresh Host and uniquely named rulesets
  (registered from a deep copy: durable-rules mutates the definition it is given);
- a ruleset loops for ever on registration past 512 services: the compiler shards the services
  (``engine.policy.compiler``), an event goes to its service's ruleset and a health fact to each
  ruleset that tests it;
- durable-rules' background dispatch threads are not started: actions run inside ``post`` (we use
  no durable-rules timers), so a decision is known when ``post`` returns.

The rule action never acts on the world: it renders an ``engine.records.Decision`` (action, params,
risk, the safeguards, verification and approval that apply) for the engine to enforce and execute.
Across a restart the engine rebuilds the host's facts by posting its journal's events again (the
one restart path: ``engine.runtime.recovery``). The order of a scoring tick (health first, so
gating sees every root) is the engine's policy stage, ``engine.runtime.policies``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from durable.engine import Host, MessageNotHandledException
from pydantic import BaseModel, ConfigDict

from engine.actions import ActionSpec, get_action
from engine.errors import EngineError, PolicyError
from engine.ids import hex_id
from engine.policy.compiler import (
    ANCHOR_TYPE,
    EVENT_TYPE,
    HEALTH_TYPE,
    HISTORY_TYPE,
    SINK_RULE,
    CompiledPolicySet,
    compile_policies,
)
from engine.policy.loader import BoundRule, PolicySet
from engine.policy.model import MIN_BOUND
from engine.policy.templates import EVENT_FIELDS, is_template, render
from engine.records import (
    SEVERITY_LEVEL,
    ActionCall,
    AnomalyEvent,
    ApprovalSpec,
    Decision,
    SafeguardSpec,
    VerifySpec,
    new_id,
)

log = logging.getLogger(__name__)


class PolicyRunError(PolicyError):
    """Rule actions failed while posting; ``decisions`` holds every decision made all the same.

    Why an exception that carries results: the engine must enforce what a rule decided even when
    another rule's action broke on the same event, without losing the error. Callers that catch
    ``PolicyError`` keep working; callers that want the decisions read ``exc.decisions``.
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


class HealthFact(BaseModel):
    """What the policy host knows about a service right now (kept current by the engine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str
    anomalous: bool = False
    maintenance: bool = False


_ON_FAILURE = {"escalate": ("escalate",), "rollback": ("rollback",), "both": ("escalate", "rollback")}


def _message(event: AnomalyEvent, *, tick_seconds: float) -> dict[str, Any]:
    """The durable-rules message: the event plus the derived fields rules test.

    ``dow`` (0 = Monday) and ``tod`` (minute of the UTC day) let maintenance windows compile to
    plain comparisons; ``strength`` maps each contributing metric to its |z|; the diagnosis is
    flattened (``diagnosis_kind``, ``diagnosis_probability``, ``role``; 'unknown' without one);
    ``sev`` is the severity as a number for range tests; ``tick`` numbers the service's scoring
    ticks ("3 of the last 5"), derived from the event's moment when it has none. The message
    ``id`` is fresh on every call, so re-posting the same event (a retry, a replay) is processed
    again.
    """
    at = event.moment
    when = datetime.fromtimestamp(at, tz=UTC)
    diagnosis = event.diagnosis
    return {
        "t": EVENT_TYPE,
        "id": hex_id(),  # durable-rules drops a message it has seen: never reuse one
        "event_id": event.id,
        "service": event.service,
        "detector": event.detector,
        "score": plain(float(event.score)),
        "threshold": plain(float(event.threshold)),
        "sev": SEVERITY_LEVEL[event.severity or "low"],
        "ts": plain(float(at)),
        "tick": event.tick if event.tick is not None else int(at // tick_seconds),
        "dow": when.weekday(),
        "tod": when.hour * 60 + when.minute,
        "metrics": {k: plain(float(v)) for k, v in event.metrics.items()},
        "contributing": list(event.contributing),
        "strength": {k: plain(v) for k, v in strengths(event).items()},
        "diagnosis_kind": diagnosis.kind if diagnosis else "unknown",
        "diagnosis_probability": plain(float(diagnosis.probability)) if diagnosis else 0.0,
        "role": diagnosis.role if diagnosis else "unknown",
    }


_LARGEST = math.nextafter(1e16, 0.0)  # Python writes 1e16 and beyond with an exponent


def plain(x: float) -> float:
    """``x`` as durable-rules' JSON parser can read it. It reads no exponent (an event with an
    error rate of ``1e-05`` failed with "error code 204" and got no decision), and Python writes
    one below 1e-4 and from 1e16 in magnitude. Bounds are 0 or between ``MIN_BOUND`` and
    ``MAX_BOUND`` (the policy loader refuses others), so a value read as ±``MIN_BOUND`` (tiny, its
    sign kept: ``max: 0`` still refuses 3e-05) or as ±``_LARGEST`` (huge or infinite) compares
    with every bound as the value itself does, but for a bound of exactly ±``MIN_BOUND``.
    """
    size = abs(x)
    if MIN_BOUND <= size < 1e16 or x == 0.0 or x != x:  # the usual case first; NaN as it was
        return x
    if size < MIN_BOUND:
        return math.copysign(MIN_BOUND, x)
    return math.copysign(_LARGEST, x)


def strengths(event: AnomalyEvent) -> dict[str, float]:
    """Each contributing metric's strength: the largest |z| among its features in the event."""
    out: dict[str, float] = {}
    for feature, z in event.features:
        metric = feature.partition("__")[0]
        strength, known = abs(float(z)), out.get(metric, 0.0)
        out[metric] = strength if strength > known else known  # max(known, strength), NaN included
    return out


def _check_utf8(message: Mapping[str, Any]) -> None:
    """Raise UnicodeEncodeError when a string of ``message`` is not valid UTF-8 (a lone surrogate).

    The same verdict as encoding the whole message as JSON (what durable-rules' C parser gets),
    at a fraction of the cost: a message's strings are its top-level strings, the items of its
    lists (contributing metrics) and the keys of its dicts (metric names; their values are numbers).
    """
    texts: list[str] = []
    for value in message.values():
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, (dict, list)):
            texts += value
    "".join(texts).encode("utf-8")


_SCALAR_FIELDS = frozenset(EVENT_FIELDS)  # each dumps to its attribute's own value
_EVENT_KEYS = (*AnomalyEvent.model_fields, "topology")


class _Scope(Mapping[str, Any]):
    """What a template reads: ``event.model_dump()`` plus ``topology``, each read only when named.

    Why not the dump itself: dumping the event (features, diagnosis) and its topology entry on
    every decision cost more than the rest of the decision. The fields a template may name
    (``EVENT_FIELDS``, ``metrics``) dump to the attribute's own value (a copy of the metrics), so
    they are read directly; any other key falls back to the full dump: what a template sees is
    unchanged.
    """

    __slots__ = ("_dump", "_event", "_topology")

    def __init__(self, event: AnomalyEvent, topology: BaseModel | None) -> None:
        self._event = event
        self._topology = topology
        self._dump: dict[str, Any] | None = None

    def __getitem__(self, key: str) -> Any:
        if key == "topology":
            return self._topology.model_dump() if self._topology is not None else {}
        if key in _SCALAR_FIELDS:
            return getattr(self._event, key)
        if key == "metrics":
            return dict(self._event.metrics)
        if self._dump is None:
            self._dump = self._event.model_dump()
        return self._dump[key]

    def __contains__(self, key: object) -> bool:
        return key in _EVENT_KEYS

    def __iter__(self) -> Iterator[str]:
        return iter(_EVENT_KEYS)

    def __len__(self) -> int:
        return len(_EVENT_KEYS)


_SCALARS = (str, int, float, bool, type(None))


class _Then:
    """A rule's ``then`` with what never changes between its decisions worked out once.

    A target or params without templates render to themselves: the target is kept as is, and
    constant params are validated once per action spec (an action registered again is validated
    again) and copied into each decision, when every value is an immutable scalar.
    """

    def __init__(self, bound: BoundRule) -> None:
        then = bound.rule.then
        self.action = then.action
        self.target = None if is_template(then.target) else str(then.target)
        self.params = then.params
        self.constant_params = not is_template(then.params)
        self._validated: tuple[ActionSpec, dict[str, Any]] | None = None

    def render_params(self, scope: Mapping[str, Any]) -> dict[str, Any]:
        spec = get_action(self.action)
        if not self.constant_params:
            return spec.validate(render(self.params, scope))
        if self._validated is not None and self._validated[0] is spec:
            return dict(self._validated[1])
        params = spec.validate(render(self.params, scope))
        if all(isinstance(v, _SCALARS) for v in params.values()):
            self._validated = (spec, dict(params))
        return params


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
        self.version = self.policy_set.fingerprint[:12]
        base = f"selfheal_{self.version}_{uuid.uuid4().hex[:8]}"
        self._names = tuple(f"{base}_{k}" for k in range(len(self.compiled.rulesets)))
        # worked out once, not per message: a covered service's ruleset (its events, history and
        # streak facts), and the rulesets that test a service's health fact
        self._ruleset_of = {s: (self._names[k],) for s, k in self.compiled.shard_of.items()}
        self._health_rulesets = {
            s: tuple(self._names[k] for k in ks) for s, ks in self.compiled.health_shards.items()
        }
        self._used: set[str] = set()  # rulesets that were sent a message (and so have a state)
        self.stats = HostStats()
        self._lock = threading.RLock()
        self._rules: dict[str, BoundRule] = {b.id: b for b in self.policy_set.rules}
        self._specs = {b.id: _specs(b) for b in self.policy_set.rules}
        self._then = {b.id: _Then(b) for b in self.policy_set.rules}
        self._fired: list[Decision] = []
        self._errors: list[BaseException] = []
        self._current: AnomalyEvent | None = None
        # service -> its fact, and the message asserted with the rulesets that took it
        self._health: dict[str, tuple[HealthFact, dict[str, Any], tuple[str, ...]]] = {}
        self._history: dict[str, deque[dict[str, Any]]] = {}
        self._anchor: dict[str, dict[str, Any]] = {}
        self._host = _Host(self)
        # durable-rules deletes "run" from the definition it is given: hand it a copy
        self._host.register_rulesets(
            {
                name: copy.deepcopy(rules)
                for name, rules in zip(self._names, self.compiled.rulesets, strict=True)
            }
        )

    # ----------------------------------------------------------------- durable-rules callbacks
    def _callback(self, durable_rule: str) -> Any:
        if durable_rule == SINK_RULE:
            return lambda c: None
        rule_id, _service = self.compiled.index[durable_rule]
        bound = self._rules[rule_id]

        def fire(c: Any) -> None:
            try:
                event = self._current
                # the matched facts by name: read from the dict (the Closure's __getattr__ is slow)
                matched: dict[str, Any] = c._m
                assert event is not None and event.id == matched["e"].get("event_id"), (
                    "decision for another event"
                )
                evidence = []
                while (name := f"h{len(evidence) + 1}") in matched:
                    evidence.append(str(matched[name].get("event_id")))
                self._fired.append(self._decide(bound, event, tuple(evidence)))
            except BaseException as exc:
                self._errors.append(exc)
                raise

        return fire

    def _decide(self, bound: BoundRule, event: AnomalyEvent, evidence: tuple[str, ...]) -> Decision:
        rule, then = bound.rule, self._then[bound.id]
        scope = _Scope(event, self.policy_set.topology.services.get(event.service))
        target = then.target if then.target is not None else str(render(rule.then.target, scope))
        params = then.render_params(scope)
        inverse = bound.inverse
        safeguards, verify, approval = self._specs[bound.id]
        return Decision(
            id=new_id("dec"),
            event_id=event.id,
            service=event.service,
            target=target,
            action=rule.then.action,
            params=params,
            risk=bound.risk,
            policy=bound.policy.policy,
            policy_version=f"{bound.policy.version}+{self.version}",
            rule=bound.id,
            safeguards=safeguards,
            verify=verify,
            approval=approval,
            inverse=None
            if inverse is None
            else ActionCall(inverse.action, dict(render(inverse.params, scope)) if inverse.params else {}),
            evidence=evidence,
            bundle_version=event.bundle_version,
            detector=event.detector,
            detector_version=event.detector_version,
            window_start=event.window_start,
            window_end=event.window_end,
            diagnosis=event.diagnosis,
        )

    # ----------------------------------------------------------------------------- public API
    def post(self, event: AnomalyEvent | Mapping[str, Any]) -> Decision | None:
        """Post one anomaly event; the decision it caused, or None (no rule matched or gated).

        The service's health fact turns anomalous first (its dependents are gated from now on).
        """
        evt = event if isinstance(event, AnomalyEvent) else AnomalyEvent.model_validate(event)
        message = _message(evt, tick_seconds=self.tick_seconds)
        try:  # durable-rules' C parser chokes on (and can crash over) strings that are not UTF-8
            _check_utf8(message)
        except UnicodeEncodeError as exc:
            self.stats.errors += 1
            raise PolicyError(
                f"event {evt.id!r} holds text that is not valid UTF-8 ({exc.reason}); not posted",
                hint="the source sent a lone surrogate in a name: fix the sender",
            ) from exc
        with self._lock:
            self.stats.posted += 1
            if evt.service in self.policy_set.topology.services:
                self._set_health(evt.service, anomalous=True, maintenance=None)
            rulesets = self._ruleset_of.get(evt.service)
            if rulesets is None:  # no rule covers its service: no ruleset would take it
                self.stats.unmatched += 1
                log.debug("event %s for %s: no rule covers its service", evt.id, evt.service)
                return None
            (ruleset,) = rulesets
            self._used.add(ruleset)
            self._fired.clear()
            self._errors.clear()
            self._current = evt
            try:
                state = self._host.post(ruleset, message)
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
            self._raise_action_error(state, evt, self._fired, ruleset)
            if decision is None:
                self.stats.unmatched += 1
                self._remember(message)
            return decision

    def set_health(self, service: str, *, anomalous: bool, maintenance: bool | None = None) -> None:
        """Keep the health fact of ``service`` current. A healthy tick ends its anomaly streak."""
        with self._lock:
            if service not in self.policy_set.topology.services:
                log.debug("health of unknown service %s ignored", service)
                return
            self._set_health(service, anomalous=anomalous, maintenance=maintenance)
            if not anomalous:
                self._end_streak(service)

    def health(self) -> dict[str, HealthFact]:
        with self._lock:
            return {s: fact for s, (fact, _, _) in self._health.items()}

    def facts(self) -> list[dict[str, Any]]:
        """The facts durable-rules holds right now (for tests and debugging)."""
        with self._lock:
            # a ruleset never posted to has no state to read (durable-rules: error 309)
            return [fact for name in self._names if name in self._used for fact in self._host.get_facts(name)]

    # ------------------------------------------------------------------------------- internals
    def _raise_action_error(
        self, state: Any, event: AnomalyEvent, fired: Sequence[Decision], ruleset: str
    ) -> None:
        """Raise PolicyRunError if a rule action failed for ``event``, keeping what ``fired``."""
        text = state.get("exception") if isinstance(state, dict) else None
        if not text and not self._errors:
            return
        self.stats.errors += 1
        cleaned = {k: v for k, v in (state or {}).items() if k != "exception"}
        if cleaned:
            self._host.update_state(ruleset, cleaned)
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

    def _assert(self, fact: dict[str, Any], rulesets: Sequence[str]) -> tuple[str, ...]:
        """Assert ``fact`` in each of ``rulesets``; the ones that took it (a fact no rule tests is
        refused by durable-rules, and must not be retracted later)."""
        took = []
        for name in rulesets:
            self._used.add(name)
            try:
                self._host.assert_fact(name, fact)
            except MessageNotHandledException:
                continue
            took.append(name)
        return tuple(took)

    def _retract(self, fact: dict[str, Any], rulesets: Sequence[str]) -> None:
        for name in rulesets:
            with contextlib.suppress(MessageNotHandledException):
                self._host.retract_fact(name, fact)

    def _set_health(self, service: str, *, anomalous: bool, maintenance: bool | None) -> None:
        old = self._health.get(service)
        keep_maintenance = old[0].maintenance if old else False
        maintenance = keep_maintenance if maintenance is None else maintenance
        if old is not None and (old[0].anomalous, old[0].maintenance) == (anomalous, maintenance):
            return  # unchanged (the usual case in a burst): no fact to build
        fact = HealthFact(service=service, anomalous=anomalous, maintenance=maintenance)
        if old is not None:
            self._retract(old[1], old[2])
        message = {"t": HEALTH_TYPE, "id": hex_id(), **fact.model_dump()}
        self._health[service] = (fact, message, self._assert(message, self._health_rulesets.get(service, ())))

    def _remember(self, message: dict[str, Any]) -> None:
        """Keep this anomaly as history for persistence rules (bounded per service), and as the
        start of the service's streak when it has none."""
        service = message["service"]
        rulesets = self._ruleset_of[service]
        if self.compiled.keeps_anchor and service not in self._anchor:
            anchor = {**message, "t": ANCHOR_TYPE, "id": f"a-{message['id']}"}
            if self._assert(anchor, rulesets):
                self._anchor[service] = anchor
        if not self.compiled.history_ticks:
            return
        fact = {**message, "t": HISTORY_TYPE, "id": f"h-{message['id']}"}
        if not self._assert(fact, rulesets):
            return
        queue = self._history.setdefault(service, deque())
        queue.append(fact)
        oldest = fact["tick"] - self.compiled.history_ticks
        while queue and (queue[0]["tick"] <= oldest or len(queue) > self.compiled.history_ticks):
            self._retract(queue.popleft(), rulesets)

    def _clear_history(self, service: str) -> None:
        """After a decision: its evidence counts no more (the count and the streak start again)."""
        for fact in self._history.pop(service, deque()):
            self._retract(fact, self._ruleset_of[service])
        self._end_streak(service)

    def _end_streak(self, service: str) -> None:
        anchor = self._anchor.pop(service, None)
        if anchor is not None:
            self._retract(anchor, self._ruleset_of[service])


def _specs(bound: BoundRule) -> tuple[SafeguardSpec, VerifySpec, ApprovalSpec]:
    """A rule's limits, verification and approval as a decision carries them (seconds, tuples)."""
    rule = bound.rule
    s, v, a = rule.safeguards, rule.verify, rule.approval
    return (
        SafeguardSpec(
            cooldown_s=float(s.cooldown),
            max_per_hour=s.max_per_hour,
            max_per_hour_global=s.max_per_hour_global,
            max_concurrent=s.max_concurrent,
            blast_radius=s.blast_radius,
        ),
        VerifySpec(
            deadline_s=float(v.deadline),
            score_below=v.steady_state.score_below,
            metrics={k: (b.min, b.max) for k, b in v.steady_state.metrics.items()},
            on_failure=_ON_FAILURE[v.on_failure],
            escalate_to=v.escalate_to,
        ),
        ApprovalSpec(
            required=bound.requires_approval,
            ttl_s=float(a.ttl),
            on_expiry=a.on_expiry,
            approvers=tuple(a.approvers),
        ),
    )
