"""Faults of the simulated AI platform and the signature each one leaves.

A fault does not write metrics directly. It perturbs a few physical knobs of one service (how slow
its own work is, how many requests it fails, whether it is restarting, how much memory it holds,
how precise its index is, ...) and the platform model turns those knobs into metrics and carries
them to the dependents through the call graph. That is why a dependency outage on the vector
database shows up in the inference services and the gateway without any special case, and why the
same faults drive the batch history and, later, the live simulation (where ``end`` is the moment a
remediation removed the cause and may be ``inf`` while nobody has acted).

Every shape is a closed-form function of time (no state, no loop over ticks), so a week of
history and a single live tick are computed by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from engine.errors import InputError
from engine.simulation.config import KIND_ROLES, AnyServiceSpec

FaultKind = Literal[
    "latency_creep", "memory_leak", "stale_index", "bad_deploy", "dependency_outage", "restart"
]

OOM_MEMORY = 0.97  # memory utilisation at which the leaking process is killed
DEPLOY_ONSET_S = 60.0  # a rollout replaces the model version within a minute
OUTAGE_ONSET_S = 30.0


@dataclass(frozen=True)
class Fault:
    """One fault on one service.

    ``start``/``end`` are epoch seconds (UTC); ``end`` is when the cause is removed (the fix, the
    OOM kill, the index refresh, the rollback) and is ``inf`` while it is still active.
    ``magnitude`` is kind-specific (see datasets/README.md): the final latency multiplier of a
    creep, the peak GC slowdown of a leak, the fractional precision drop of a stale index, the
    error rate a bad deploy adds, the error fraction of an outage. ``ramp_s`` is the time to full
    effect (creep, leak up to the OOM kill, index decay); ``recovery_s`` is how long the signal
    takes to return after ``end`` (the restart of a leak, the index rebuild, the rollback).
    ``restart`` is not an incident: it is the effect of restarting a service (it is unavailable
    for ``end - start`` seconds), used by the leak and by remediations in the live simulation.
    """

    kind: FaultKind
    service: str
    start: float
    end: float = math.inf
    magnitude: float = 1.0
    ramp_s: float = 3600.0
    recovery_s: float = 0.0

    @property
    def label_end(self) -> float:
        """End of the labeled incident window: the signal is back to normal."""
        return self.end + self.recovery_s


class PlatformView(Protocol):
    """What a fault needs to know of the platform: its services, their specs and who calls whom.

    ``PlatformModel`` is one; faults take this narrow view so that the model can import the faults
    (it applies them) without the faults importing the model back.
    """

    @property
    def services(self) -> list[str]: ...

    @property
    def specs(self) -> dict[str, AnyServiceSpec]: ...

    @property
    def callers(self) -> dict[str, list[str]]: ...


class Effects:
    """Per-service knobs the faults turn; neutral unless a fault touched them.

    Multiplicative knob: ``slow`` (own work time; for an inference service also 1/tokens-per-s).
    Additive knobs: ``err``
    (own error fraction), ``down`` (fraction of the tick the service is restarting), ``mem``,
    ``cpu`` (utilisation), ``var`` (response variability), ``precision_drop``/``hit_drop``
    (fractional retrieval quality loss), ``backlog`` (queued work, e.g. ingestion batches).
    """

    MULTIPLICATIVE = frozenset({"slow"})
    ADDITIVE = frozenset({"err", "down", "mem", "cpu", "var", "precision_drop", "hit_drop", "backlog"})

    def __init__(self) -> None:
        self._knobs: dict[tuple[str, str], np.ndarray] = {}

    def get(self, service: str, knob: str) -> np.ndarray | float:
        if (service, knob) in self._knobs:
            return self._knobs[(service, knob)]
        return 1.0 if knob in self.MULTIPLICATIVE else 0.0

    def scale(self, service: str, knob: str, factor: np.ndarray) -> None:
        assert knob in self.MULTIPLICATIVE, knob
        self._knobs[(service, knob)] = self.get(service, knob) * factor

    def add(self, service: str, knob: str, amount: np.ndarray) -> None:
        assert knob in self.ADDITIVE, knob
        self._knobs[(service, knob)] = self.get(service, knob) + amount


def _level(t: np.ndarray, fault: Fault, rise: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """0 before start; rise(t - start) while active; after end, a linear return to 0 over recovery."""
    elapsed = np.maximum(t - fault.start, 0.0)
    active = rise(elapsed) * (t >= fault.start)
    if math.isinf(fault.end):
        return active
    at_end = float(rise(np.array([fault.end - fault.start]))[0])
    if fault.recovery_s > 0:
        decay = np.clip(1.0 - (t - fault.end) / fault.recovery_s, 0.0, 1.0)
    else:
        decay = np.zeros_like(t)
    return np.where(t < fault.end, active, at_end * decay)


def _linear(seconds: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda d: np.clip(d / max(seconds, 1e-9), 0.0, 1.0)


def _latency_creep(fault: Fault, t: np.ndarray, model: PlatformView, eff: Effects) -> None:
    """Own work slows down gradually (fragmentation, cache growth) until someone fixes it."""
    level = _level(t, fault, lambda d: _linear(fault.ramp_s)(d) ** 1.5)
    eff.scale(fault.service, "slow", 1.0 + (fault.magnitude - 1.0) * level)
    eff.add(fault.service, "cpu", 0.05 * level)


def _memory_leak(fault: Fault, t: np.ndarray, model: PlatformView, eff: Effects) -> None:
    """Memory climbs to the OOM kill, GC thrash slows the service near the top, then a restart.

    While the cause is active the process leaks, is killed at OOM_MEMORY after ``ramp_s``, is
    unavailable for ``recovery_s`` and starts leaking again (a sawtooth); after ``end`` (the last
    kill, or an operator's restart) it restarts once and stays healthy.
    """
    spec = model.specs[fault.service]
    restart_s = max(fault.recovery_s, 0.0)
    cycle = fault.ramp_s + restart_s
    elapsed = t - fault.start
    inside = (t >= fault.start) & (t < fault.end)
    phase = np.where(inside, np.mod(np.maximum(elapsed, 0.0), cycle), 0.0)
    leaking = inside & (phase < fault.ramp_s)
    restarting = (inside & ~leaking) | ((t >= fault.end) & (t < fault.end + restart_s))
    frac = np.where(leaking, phase / fault.ramp_s, 0.0)
    headroom = OOM_MEMORY - (spec.memory_util + 0.5 * spec.memory_per_load)
    thrash = np.clip((frac - 0.65) / 0.35, 0.0, 1.0) ** 2
    eff.add(fault.service, "mem", max(headroom, 0.0) * frac - 0.4 * spec.memory_util * restarting)
    eff.scale(fault.service, "slow", 1.0 + (fault.magnitude - 1.0) * thrash)
    eff.add(fault.service, "cpu", 0.3 * thrash)
    eff.add(fault.service, "down", restarting.astype(np.float64))


def _stale_index(fault: Fault, t: np.ndarray, model: PlatformView, eff: Effects) -> None:
    """The index drifts from the corpus: precision decays slowly, hit rate less; a refresh restores."""
    level = _level(t, fault, lambda d: 1.0 - np.exp(-3.0 * d / max(fault.ramp_s, 1e-9)))
    eff.add(fault.service, "precision_drop", fault.magnitude * level)
    eff.add(fault.service, "hit_drop", 0.5 * fault.magnitude * level)


def _bad_deploy(fault: Fault, t: np.ndarray, model: PlatformView, eff: Effects) -> None:
    """A worse model version: errors and response variability jump, it is also a bit slower."""
    level = _level(t, fault, _linear(DEPLOY_ONSET_S))
    eff.add(fault.service, "err", fault.magnitude * level)
    eff.add(fault.service, "var", 2.5 * fault.magnitude * level)
    eff.scale(fault.service, "slow", 1.0 + 0.2 * level)
    eff.add(fault.service, "mem", 0.05 * level)


def _dependency_outage(fault: Fault, t: np.ndarray, model: PlatformView, eff: Effects) -> None:
    """The root fails a fraction of calls and the rest time out slowly; callers feel it via the graph.

    Batch writers (ingestion) that call the root cannot write: their backlog grows during the
    outage and drains at twice their normal rate afterwards (closed form, no integration).
    """
    level = _level(t, fault, _linear(OUTAGE_ONSET_S))
    eff.add(fault.service, "err", fault.magnitude * level)
    eff.scale(fault.service, "slow", 1.0 + 8.0 * fault.magnitude * level)
    eff.add(fault.service, "cpu", 0.15 * level)
    for caller in model.callers[fault.service]:
        spec = model.specs[caller]
        if spec.role != "ingestion":
            continue
        rate = spec.request_rate * fault.magnitude * spec.criticality
        stuck = np.clip(np.minimum(t, fault.end) - fault.start, 0.0, None) * rate
        drained = np.clip(t - fault.end, 0.0, None) * 2.0 * spec.request_rate
        eff.add(caller, "backlog", np.clip(stuck - drained, 0.0, None))


def _restart(fault: Fault, t: np.ndarray, model: PlatformView, eff: Effects) -> None:
    spec = model.specs[fault.service]
    down = ((t >= fault.start) & (t < fault.end)).astype(np.float64)
    eff.add(fault.service, "down", down)
    eff.add(fault.service, "mem", -0.4 * spec.memory_util * down)


_SIGNATURES: dict[str, Callable[[Fault, np.ndarray, PlatformView, Effects], None]] = {
    "latency_creep": _latency_creep,
    "memory_leak": _memory_leak,
    "stale_index": _stale_index,
    "bad_deploy": _bad_deploy,
    "dependency_outage": _dependency_outage,
    "restart": _restart,
}


def apply_faults(faults: Iterable[Fault], t: np.ndarray, model: PlatformView) -> Effects:
    """Turn the faults into per-service knobs over the time array t (epoch seconds)."""
    eff = Effects()
    for fault in faults:
        if fault.service not in model.specs:
            raise InputError(
                f"fault {fault.kind} targets unknown service '{fault.service}'",
                hint=f"use one of: {', '.join(model.services)}",
            )
        if fault.kind not in _SIGNATURES:
            raise InputError(
                f"unknown fault kind '{fault.kind}'", hint=f"use one of: {', '.join(_SIGNATURES)}"
            )
        role = model.specs[fault.service].role
        if fault.kind != "restart" and role not in KIND_ROLES[fault.kind]:
            raise InputError(
                f"fault {fault.kind} cannot happen on '{fault.service}' (a {role} service)",
                hint=f"target a service with role {' or '.join(sorted(KIND_ROLES[fault.kind]))}",
            )
        _SIGNATURES[fault.kind](fault, t, model, eff)
    return eff
