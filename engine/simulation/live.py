"""The simulated AI platform: the synthetic platform's signal model, run live, with faults and controls.

Why this reuses ``engine.simulation.model`` instead of writing its own physics: the history
the detectors were trained on and the platform the chaos experiments break must be the same
platform, or a detector that passes a game day proves nothing. The model is closed-form in time,
faults and controls, so a live platform only has to keep *state*: which faults are active and when
their causes were removed, the replica counts (capacity), the traffic weights, the model versions.
Each tick evaluates the model at the tick's platform time with that state.

How remediations act (each is a change to a fault's ``end`` and ``recovery_s``, or to a control):

- ``restart`` is a rolling restart that completes after ``restart_s``: it removes the cause of a
  memory leak, a latency creep and a dependency outage *on that service* (no downtime: the
  replicas are replaced one at a time). It does nothing to a stale index or a bad model version,
  and restarting a victim of an outage leaves the outage at its root untouched.
- ``refresh_index`` ends a stale index at once; precision comes back over ``index_rebuild_s``.
- ``rollback_model`` serves the previous version: a bad deploy ends, errors fade over ``rollout_s``.
- ``scale`` changes capacity (replicas / the initial count); ``shift_traffic`` on the gateway sets
  the traffic shares of the inference services.

Everything is keyed on platform time from an injectable clock (``engine.simulation.clock``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.simulation.clock import SimClock
from engine.simulation.config import INCIDENT_KINDS, KIND_ROLES, SynthConfig, load_config
from engine.simulation.faults import Fault
from engine.simulation.model import Controls, PlatformModel

log = logging.getLogger(__name__)

Point = tuple[float, str, str, float]  # ts (platform epoch s), service, metric, value

RESTART_CLEARS = frozenset({"memory_leak", "latency_creep", "dependency_outage"})
#: Per-kind defaults of an injected fault (platform seconds); magnitudes as in datasets/synth_platform.yaml.
FAULT_DEFAULTS: dict[str, dict[str, float]] = {
    "latency_creep": {"magnitude": 2.5, "ramp_s": 1200.0, "recovery_s": 0.0},
    "memory_leak": {"magnitude": 3.0, "ramp_s": 2400.0, "recovery_s": 30.0},
    "stale_index": {"magnitude": 0.45, "ramp_s": 900.0, "recovery_s": 300.0},
    "bad_deploy": {"magnitude": 0.12, "ramp_s": 60.0, "recovery_s": 60.0},
    "dependency_outage": {"magnitude": 0.8, "ramp_s": 30.0, "recovery_s": 60.0},
}
FAULT_PARAMS = frozenset({"magnitude", "ramp_s", "recovery_s", "duration_s"})


class PlatformError(InputError):
    """A request the simulated platform refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, message: str, *, status: int, field: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status
        self.field = field


@dataclass
class ActiveFault:
    """A fault as the platform tracks it: the model's ``Fault`` plus who cleared it and when."""

    id: str
    fault: Fault
    injected_at: float
    cleared_at: float | None = None
    cleared_by: str | None = None
    version: str | None = None  # the model version a bad deploy shipped

    def as_dict(self) -> dict[str, Any]:
        f = self.fault
        return {
            "fault_id": self.id,
            "kind": f.kind,
            "service": f.service,
            "start": f.start,
            "end": None if math.isinf(f.end) else f.end,
            "magnitude": f.magnitude,
            "ramp_s": f.ramp_s,
            "recovery_s": f.recovery_s,
            "cleared_at": self.cleared_at,
            "cleared_by": self.cleared_by,
        }


@dataclass
class ServiceState:
    replicas: int
    initial_replicas: int
    weights: dict[str, float] = field(default_factory=dict)
    versions: list[str] = field(default_factory=lambda: ["v1"])
    version: str = "v1"
    restarts: int = 0
    last_restart: float | None = None


@dataclass(frozen=True)
class AdminRecord:
    """One admin call as the platform saw it (the report lines actions up against faults)."""

    ts: float
    service: str
    op: str
    body: dict[str, Any]
    response: dict[str, Any]
    idempotency_key: str | None


class SimulatedPlatform:
    """The live platform: state, admin operations, ticks. Thread-safe (one lock)."""

    def __init__(
        self,
        clock: SimClock,
        *,
        config: SynthConfig | None = None,
        seed: int = 0,
        replicas: Mapping[str, int] | None = None,
        restart_s: float = 60.0,
        index_rebuild_s: float | None = None,
        rollout_s: float = 60.0,
    ) -> None:
        self.clock = clock
        self.model = PlatformModel(config or load_config(), seed=seed)
        self.interval = float(self.model.cfg.interval_s)
        self.restart_s = restart_s
        self.index_rebuild_s = index_rebuild_s
        self.rollout_s = rollout_s
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC4A05]))
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self.faults: list[ActiveFault] = []
        self.admin_log: list[AdminRecord] = []
        self.services: dict[str, ServiceState] = {}
        for name in self.model.services:
            n = int((replicas or {}).get(name, 2))
            state = ServiceState(replicas=n, initial_replicas=n)
            if self.model.specs[name].role == "gateway":
                state.weights = {d: float(self.model.specs[d].share) for d in self.model.topology[name]}  # type: ignore[union-attr]
            self.services[name] = state
        self._last_tick: float | None = None
        self.latest: dict[tuple[str, str], tuple[float, float]] = {}
        self.listeners: list[Callable[[list[Point]], None]] = []

    # ------------------------------------------------------------------------------------ ticks
    def start_at(self, t: float) -> None:
        """The first tick will be the first multiple of the interval after ``t``."""
        with self._lock:
            self._last_tick = math.floor(t / self.interval) * self.interval

    def advance_to(self, t: float) -> list[Point]:
        """Produce every tick in (last tick, t]: one vectorised model call with the current state."""
        with self._lock:
            if self._last_tick is None:
                self.start_at(t - self.interval)
            assert self._last_tick is not None
            n = int((t - self._last_tick) // self.interval)
            if n <= 0:
                return []
            ticks = self._last_tick + self.interval * np.arange(1, n + 1, dtype=np.float64)
            values = self.model.values(ticks, [f.fault for f in self.faults], self._rng, self._controls())
            self._last_tick = float(ticks[-1])
            series = [(s, m, arr.tolist()) for s, ms in values.items() for m, arr in ms.items()]
            # tick-major order: a consumer with no lateness allowance drops points older than its watermark
            points: list[Point] = [
                (float(ts), s, m, vals[i]) for i, ts in enumerate(ticks.tolist()) for s, m, vals in series
            ]
            for s, m, vals in series:
                self.latest[(s, m)] = (vals[-1], float(ticks[-1]))
            listeners = list(self.listeners)
        for listener in listeners:
            listener(points)
        return points

    def expected(self, t: float) -> dict[str, dict[str, float]]:
        """Noise-free metric values at platform time ``t`` under the current state (for probes)."""
        with self._lock:
            vals = self.model.values(np.array([t]), [f.fault for f in self.faults], None, self._controls())
        return {s: {m: float(a[0]) for m, a in ms.items()} for s, ms in vals.items()}

    def _controls(self) -> Controls:
        capacity = {n: s.replicas / s.initial_replicas for n, s in self.services.items()}
        share: dict[str, float] = {}
        for state in self.services.values():
            share.update(state.weights)
        return Controls(capacity=capacity, share=share)

    # ------------------------------------------------------------------------------------ admin
    def service(self, name: str) -> ServiceState:
        state = self.services.get(name)
        if state is None:
            raise PlatformError(
                f"unknown service {name!r}", status=404, hint=f"services: {', '.join(self.services)}"
            )
        return state

    def state(self, name: str) -> dict[str, Any]:
        with self._lock:
            s = self.service(name)
            return {
                "service": name,
                "role": self.model.specs[name].role,
                "replicas": s.replicas,
                "weights": dict(s.weights),
                "model_version": s.version,
                "versions": list(s.versions),
                "restarts": s.restarts,
                "faults": [f.as_dict() for f in self.faults if f.fault.service == name and self._active(f)],
                "time": self.clock.now(),
            }

    def admin(self, service: str, op: str, body: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
        """Apply one admin operation of the contract (``engine.simulation.server``) now."""
        handler = {
            "restart": self.restart,
            "scale": self.scale,
            "shift_traffic": self.shift_traffic,
            "refresh_index": self.refresh_index,
            "rollback_model": self.rollback_model,
            "faults": self.inject,
        }.get(op)
        if handler is None:
            raise PlatformError(f"unknown operation {op!r}", status=404)
        with self._lock:
            self.service(service)
            out = handler(service, dict(body))
            self.admin_log.append(AdminRecord(self.clock.now(), service, op, dict(body), out, key))
            return out

    def restart(self, service: str, body: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.now()
        done = now + self.restart_s
        for f in self.faults:
            if f.fault.service == service and f.fault.kind in RESTART_CLEARS and self._active(f):
                # rolling restart: the cause is gone once the last replica is replaced, no downtime
                keep = f.fault.kind == "dependency_outage"  # connections re-establish over recovery_s
                self._clear(f, done, f"restart@{now:.0f}", recovery_s=None if keep else 0.0)
        state = self.services[service]
        state.restarts += 1
        state.last_restart = now
        return {"ok": True, "restarted_at": now, "completes_at": done}

    def scale(self, service: str, body: dict[str, Any]) -> dict[str, Any]:
        state = self.services[service]
        if "replicas" in body and body["replicas"] is not None:
            target = _int(body["replicas"], "replicas")
        elif "delta" in body and body["delta"] is not None:
            target = state.replicas + _int(body["delta"], "delta")
        else:
            raise PlatformError("scale needs replicas or delta", status=422, field="replicas")
        previous, state.replicas = state.replicas, max(1, target)
        return {"ok": True, "previous": previous, "replicas": state.replicas}

    def shift_traffic(self, service: str, body: dict[str, Any]) -> dict[str, Any]:
        weights = body.get("weights")
        if not isinstance(weights, dict) or not weights:
            raise PlatformError("weights must be a non-empty mapping", status=422, field="weights")
        try:
            clean = {str(k): float(v) for k, v in weights.items()}
        except (TypeError, ValueError):
            raise PlatformError("weights must be numbers", status=422, field="weights") from None
        if any(v < 0 for v in clean.values()) or sum(clean.values()) <= 0:
            raise PlatformError("weights must be >= 0 and sum to > 0", status=422, field="weights")
        state = self.services[service]
        unknown = [k for k in clean if state.weights and k not in state.weights]
        if unknown:
            raise PlatformError(
                f"{service} routes to {', '.join(state.weights)}, not {', '.join(unknown)}",
                status=422,
                field="weights",
            )
        previous, state.weights = dict(state.weights), clean
        return {"ok": True, "previous": previous, "weights": clean}

    def refresh_index(self, service: str, body: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.now()
        for f in self.faults:
            if f.fault.service == service and f.fault.kind == "stale_index" and self._active(f):
                self._clear(f, now, f"refresh_index@{now:.0f}", recovery_s=self.index_rebuild_s)
        return {"ok": True, "started_at": now, "index": body.get("index")}

    def rollback_model(self, service: str, body: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.now()
        state = self.services[service]
        version = body.get("version")
        previous = state.version
        if version is None:
            i = state.versions.index(state.version)
            if i == 0:
                raise PlatformError(
                    f"{service} serves its first version {previous}; nothing to roll back to",
                    status=422,
                    field="version",
                )
            version = state.versions[i - 1]
        elif version not in state.versions:
            raise PlatformError(
                f"{service} never deployed {version!r}",
                status=422,
                field="version",
                hint=f"versions: {', '.join(state.versions)}",
            )
        state.version = str(version)
        for f in self.faults:
            bad = f.fault.kind == "bad_deploy" and f.version != state.version  # no longer served
            if f.fault.service == service and bad and self._active(f):
                self._clear(f, now, f"rollback_model@{now:.0f}", recovery_s=self.rollout_s)
        return {"ok": True, "previous": previous, "version": state.version}

    def inject(self, service: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /admin/{service}/faults``: start a fault now (or clear it after ``duration_s``)."""
        kind = body.get("kind")
        if kind not in INCIDENT_KINDS:
            raise PlatformError(
                f"unknown fault kind {kind!r}",
                status=422,
                field="kind",
                hint=f"kinds: {', '.join(INCIDENT_KINDS)}",
            )
        role = self.model.specs[service].role
        if role not in KIND_ROLES[kind]:
            raise PlatformError(
                f"{kind} cannot happen on {service} (a {role} service)",
                status=422,
                field="kind",
                hint=f"target a service with role {' or '.join(sorted(KIND_ROLES[kind]))}",
            )
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise PlatformError("params must be a mapping", status=422, field="params")
        unknown = sorted(set(params) - FAULT_PARAMS)
        if unknown:
            raise PlatformError(
                f"unknown fault parameter(s) {', '.join(unknown)}",
                status=422,
                field=f"params.{unknown[0]}",
                hint=f"parameters: {', '.join(sorted(FAULT_PARAMS))}",
            )
        values = {**FAULT_DEFAULTS[kind]}
        for key, value in params.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise PlatformError(f"{key} must be a number >= 0", status=422, field=f"params.{key}")
            values[key] = float(value)
        now = self.clock.now()
        duration = values.pop("duration_s", None)
        fault = Fault(
            kind=kind,
            service=service,
            start=now,
            end=math.inf if duration is None else now + duration,
            magnitude=values["magnitude"],
            ramp_s=max(values["ramp_s"], 1.0),
            recovery_s=values["recovery_s"],
        )
        fault_id = f"f{next(self._ids)}-{kind}-{service}"
        active = ActiveFault(fault_id, fault, now)
        if kind == "bad_deploy":
            state = self.services[service]
            bad = f"v{len(state.versions) + 1}"
            state.versions.append(bad)
            state.version = bad
            active.version = bad
        self.faults.append(active)
        log.info("fault %s injected at %.0f", fault_id, now)
        return {"ok": True, "fault_id": fault_id}

    def clear_faults(self, service: str, fault_id: str | None = None, *, by: str = "operator") -> int:
        """``DELETE /admin/{service}/faults[/{id}]``: remove causes now (signals recover as modelled)."""
        with self._lock:
            self.service(service)
            now = self.clock.now()
            n = 0
            for f in self.faults:
                if f.fault.service == service and self._active(f) and (fault_id is None or f.id == fault_id):
                    self._clear(f, now, by)
                    n += 1
                    if f.fault.kind == "bad_deploy":
                        state = self.services[service]
                        state.version = state.versions[max(0, state.versions.index(state.version) - 1)]
            if fault_id is not None and n == 0 and not any(f.id == fault_id for f in self.faults):
                raise PlatformError(f"no fault {fault_id!r} on {service}", status=404)
            self.admin_log.append(
                AdminRecord(now, service, "clear_faults", {"fault_id": fault_id}, {"cleared": n}, None)
            )
            return n

    def _active(self, f: ActiveFault) -> bool:
        return f.cleared_at is None and (math.isinf(f.fault.end) or f.fault.end > self.clock.now())

    def _clear(self, f: ActiveFault, end: float, by: str, *, recovery_s: float | None = None) -> None:
        update: dict[str, Any] = {"end": max(end, f.fault.start)}
        if recovery_s is not None:
            update["recovery_s"] = recovery_s
        f.fault = dataclasses.replace(f.fault, **update)
        f.cleared_at = self.clock.now()
        f.cleared_by = by
        log.info("fault %s cleared by %s (cause gone at %.0f)", f.id, by, end)

    def fault(self, fault_id: str) -> ActiveFault:
        with self._lock:
            for f in self.faults:
                if f.id == fault_id:
                    return f
        raise PlatformError(f"no fault {fault_id!r}", status=404)

    def snapshot(self) -> dict[str, Any]:
        """Everything about the platform now (``GET /platform``)."""
        with self._lock:
            return {
                "time": self.clock.now(),
                "speed": self.clock.speed,
                "last_tick": self._last_tick,
                "services": {n: self.state(n) for n in self.services},
                "topology": self.model.topology,
            }


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlatformError(f"{name} must be an integer", status=422, field=name)
    return value
