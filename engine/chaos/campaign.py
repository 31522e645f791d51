"""Chaos campaigns: experiments drawn at random from a seed, with expectations derived, not written.

Why: the shipped experiments are a handful of hand-written faults, and the detector and policies
were tuned on them. A campaign asks whether the closed loop heals the same kinds of fault where
nobody looked: on another service, at 0.5x to 5x the shipped strength, at any hour of any weekday,
two at once, and when nothing is wrong at all (quiet controls, where every action is a false one).

What one draw is (experiment ``i`` of campaign ``seed`` uses its own stream
``SeedSequence([seed, i])``, so a campaign of 8 is the first 8 experiments of a campaign of 50):

- a quiet control (``CONTROL_SHARE``), one fault, or two concurrent faults on distinct services
  (``PAIR_SHARE``; the second starts 0-10 minutes after the first);
- a fault kind, uniformly; a service, uniformly among the *eligible* ones: where the platform has
  the kind (``datasets/synth_platform.yaml``'s roles) and a policy declares a remedy for it there
  (the pairs no policy covers are listed in the report, not drawn);
- a scale, log-uniform in 0.5x..5x of the kind's shipped experiment (``experiments/chaos/<kind>.yaml``)
  applied to what makes the kind strong (``scale_params``), capped where the kind's physics ends;
- a start on a 10-minute grid of a reference week (weekday x time of day) and a platform seed
  (traffic wander and noise).

How the expectation is derived (from the policies and the platform model, never from a run):

- remedy: the rules of the policy named after the kind (``memory-leak`` remedies ``memory_leak``)
  that cover the faulted service; the expected action is any one of theirs, on that service only
  (the root), verified by the engine. Everything else the engine executes is unexpected: an action
  on a victim, a wrong remedy on a root, or any action in a quiet control;
- approval: when a remedy's risk needs one, the campaign approves it through the engine's API two
  minutes after the request, as the rule's first approver, and expects it approved; any other
  approval request is left to expire;
- deadline: the fault's onset (time to full strength) plus ``DETECT_S`` for detection, persistence
  and dispatch, plus the approval's two minutes and any maintenance window of the remedy's rule; a
  memory leak must be restarted before its OOM kill (its ramp);
- steady state: the root's signal of its kind and the gateway's error rate, with tolerances around
  the platform model's noise-free values over the experiment's hours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from engine.chaos.api import EXPERIMENTS_DIR
from engine.chaos.experiment import (
    Experiment,
    dump_experiment,
    load_experiment,
)
from engine.errors import InputError
from engine.simulation.config import INCIDENT_KINDS, KIND_ROLES, SynthConfig, load_config
from engine.simulation.faults import DEPLOY_ONSET_S, OUTAGE_ONSET_S
from engine.simulation.live import FAULT_DEFAULTS
from engine.simulation.model import PlatformModel

REFERENCE_WEEK = datetime(2026, 1, 12)  # a Monday; campaign starts fall in this week (naive UTC)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
WEEKDAYS_LOWER = tuple(d.lower() for d in WEEKDAYS)  # the policies' spelling
CONTROL_SHARE = 0.10
PAIR_SHARE = 0.25
SCALE_RANGE = (0.5, 5.0)
MAGNITUDE_CAP = {"stale_index": 1.0, "bad_deploy": 1.0, "dependency_outage": 1.0}  # fractions
DETECT_S = 20 * 60.0  # after full onset: detection, the policies' persistence, dispatch
APPROVE_AFTER_S = 120.0
PAIR_GAP_MAX_MIN = 10
TAIL_S = 5 * 60.0  # the method's pause after the last fault
CONTROL_S = 45 * 60.0  # a quiet control's observation window
SETTLE_S = 10 * 60.0
CAMPAIGN_APPROVER = "chaos-campaign"

#: The root's signal of each kind (metric, aggregate, window) in the steady-state hypothesis.
SIGNAL: dict[str, tuple[str, str, float]] = {
    "latency_creep": ("latency_p99_ms", "mean", 300.0),
    "memory_leak": ("memory_util", "max", 180.0),
    "stale_index": ("retrieval_precision", "mean", 300.0),
    "bad_deploy": ("error_rate", "mean", 300.0),
    "dependency_outage": ("error_rate", "mean", 300.0),
}


@dataclass(frozen=True)
class Remedy:
    """What the policies declare for a fault kind on one service."""

    kind: str
    service: str
    actions: tuple[str, ...]
    approval_actions: tuple[str, ...]  # the actions among ``actions`` whose risk needs an approval
    approver: str
    verify_deadline_s: float
    maintenance: tuple[Any, ...] = ()  # the rules' MaintenanceWindow entries


@dataclass(frozen=True)
class DrawnFault:
    kind: str
    service: str
    scale: float
    offset_s: float  # after the first injection
    params: dict[str, float]


@dataclass(frozen=True)
class Draw:
    """What the dice said for one experiment (the campaign's manifest row)."""

    index: int
    name: str
    control: bool
    faults: tuple[DrawnFault, ...]
    start: datetime
    platform_seed: int

    @property
    def label(self) -> str:
        if self.control:
            return "quiet control"
        return " + ".join(f"{f.kind}@{f.service} x{f.scale:.2f}" for f in self.faults)

    @property
    def when(self) -> str:
        return f"{WEEKDAYS[self.start.weekday()]} {self.start:%H:%M}"


@dataclass(frozen=True)
class Generated:
    draw: Draw
    experiment: Experiment


@dataclass
class Campaign:
    seed: int
    items: list[Generated]
    eligible: dict[str, list[str]]
    uncovered: list[tuple[str, str]]  # (kind, service): the platform has it, no policy remedies it
    remedies: dict[tuple[str, str], Remedy] = field(repr=False)

    def manifest(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "n": len(self.items),
            "eligible": self.eligible,
            "uncovered": [list(p) for p in self.uncovered],
            "experiments": [
                {**asdict(g.draw), "start": g.draw.start.isoformat(), "label": g.draw.label}
                for g in self.items
            ],
        }


# ------------------------------------------------------------------------------------ policies
def remedies(policies: Any) -> dict[tuple[str, str], Remedy]:
    """(kind, service) -> the remedy the policies declare, from a loaded ``PolicySet``.

    A policy remedies the incident kind it is named after (``dependency-outage`` ->
    ``dependency_outage``): the shipped policies' convention, until policies match on a diagnosed
    kind. Its enabled rules that cover a service give the actions expected there.
    """
    by_pair: dict[tuple[str, str], list[Any]] = {}
    for bound in policies.rules:
        kind = bound.policy.policy.replace("-", "_")
        if kind not in INCIDENT_KINDS or not bound.rule.enabled:
            continue
        for service in bound.services:
            by_pair.setdefault((kind, service), []).append(bound)
    out: dict[tuple[str, str], Remedy] = {}
    for (kind, service), bounds in by_pair.items():
        bounds.sort(key=lambda b: -b.rule.priority)
        needs = [b for b in bounds if b.requires_approval]
        approvers = [a for b in needs for a in b.rule.approval.approvers]
        out[(kind, service)] = Remedy(
            kind=kind,
            service=service,
            actions=tuple(dict.fromkeys(b.rule.then.action for b in bounds)),
            approval_actions=tuple(dict.fromkeys(b.rule.then.action for b in needs)),
            approver=approvers[0] if approvers else CAMPAIGN_APPROVER,
            verify_deadline_s=max(float(b.rule.verify.deadline) for b in bounds),
            maintenance=tuple(w for b in bounds for w in b.rule.unless.maintenance_windows),
        )
    return out


def eligibility(
    config: SynthConfig, table: Mapping[tuple[str, str], Remedy]
) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Per kind, the services a campaign may fault; and the pairs the platform has but no policy covers."""
    model = PlatformModel(config)
    eligible: dict[str, list[str]] = {}
    uncovered: list[tuple[str, str]] = []
    for kind in INCIDENT_KINDS:
        spec = config.incidents.kinds.get(kind)
        roles = set(spec.roles) if spec is not None and spec.roles else set(KIND_ROLES[kind])
        for service in model.services:
            if model.specs[service].role not in roles:
                continue
            if kind == "dependency_outage" and not model.callers[service]:
                continue  # an outage nobody calls is no dependency outage
            if (kind, service) in table:
                eligible.setdefault(kind, []).append(service)
            else:
                uncovered.append((kind, service))
    return eligible, uncovered


# ------------------------------------------------------------------------------------ faults
def base_faults(folder: Path = EXPERIMENTS_DIR) -> dict[str, dict[str, float]]:
    """Each kind's fault parameters in its shipped experiment (``<folder>/<kind>.yaml``), defaults filled."""
    out: dict[str, dict[str, float]] = {}
    for kind in INCIDENT_KINDS:
        exp = load_experiment(folder / f"{kind}.yaml")
        (fault,) = [f for f in exp.faults if f.kind == kind]
        params = {**FAULT_DEFAULTS[kind], **fault.params}
        params.pop("duration_s", None)
        out[kind] = params
    return out


def scale_params(kind: str, base: Mapping[str, float], scale: float) -> dict[str, float]:
    """The fault ``scale`` times as strong as ``base``, on the knob that makes the kind strong.

    A latency creep's slowdown beyond normal work (magnitude 1.3 at 2x is 1.6); a memory leak's
    rate (the time to its OOM kill divided by the scale); otherwise the magnitude itself (errors
    added, precision lost, calls failed), capped at the whole (a fraction cannot pass 1).
    """
    params = dict(base)
    if kind == "latency_creep":
        params["magnitude"] = round(1.0 + (base["magnitude"] - 1.0) * scale, 4)
    elif kind == "memory_leak":
        params["ramp_s"] = float(round(base["ramp_s"] / scale))
    else:
        params["magnitude"] = round(min(base["magnitude"] * scale, MAGNITUDE_CAP[kind]), 4)
    return params


def onset_s(kind: str, params: Mapping[str, float]) -> float:
    """Platform seconds from injection to the fault's full strength."""
    if kind == "bad_deploy":
        return DEPLOY_ONSET_S
    if kind == "dependency_outage":
        return OUTAGE_ONSET_S
    return float(params["ramp_s"])


def _covered(window: Any, t: float) -> bool:
    """Whether a policy's maintenance window (recurring or fixed, UTC) covers epoch second ``t``."""
    moment = datetime.fromtimestamp(t, UTC).replace(tzinfo=None)
    if window.from_ is not None:
        return bool(window.from_ <= moment < window.until)
    first, last = window.minutes()
    tod = moment.hour * 60 + moment.minute
    days = set(window.days or WEEKDAYS_LOWER)
    today, yesterday = WEEKDAYS_LOWER[moment.weekday()], WEEKDAYS_LOWER[(moment.weekday() - 1) % 7]
    if first <= last:
        return today in days and first <= tod < last
    return (today in days and tod >= first) or (yesterday in days and tod < last)


def maintenance_s(remedy: Remedy, start: float, span: float) -> float:
    """How long the remedy's maintenance windows hold it back within ``span`` after ``start``.

    The rule waits a window out, so the span grows by what the windows cover (minute steps).
    """
    if not remedy.maintenance:
        return 0.0
    held, t, end = 0.0, start, start + span
    while t < end and held < 7 * 86400:
        if any(_covered(w, t) for w in remedy.maintenance):
            held += 60.0
            end += 60.0
        t += 60.0
    return held


def deadline_s(remedy: Remedy, kind: str, params: Mapping[str, float], injected: float) -> float:
    """How long after its injection a fault's remedy may come and still count (see the module doc)."""
    # a leak must be restarted before its OOM kill; otherwise full strength plus detection time
    within = float(params["ramp_s"]) if kind == "memory_leak" else onset_s(kind, params) + DETECT_S
    if remedy.approval_actions:
        within += APPROVE_AFTER_S
    return within + maintenance_s(remedy, injected, within)


# ------------------------------------------------------------------------------------ the draw
def _draw(
    seed: int,
    index: int,
    eligible: Mapping[str, Sequence[str]],
    base: Mapping[str, Mapping[str, float]],
) -> Draw:
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    u = rng.random()
    count = 0 if u < CONTROL_SHARE else (2 if u < CONTROL_SHARE + PAIR_SHARE else 1)
    kinds = sorted(eligible)
    faults: list[DrawnFault] = []
    taken: set[str] = set()
    for k in range(count):
        kind = kinds[int(rng.integers(len(kinds)))]
        free = [s for s in eligible[kind] if s not in taken]
        while not free:  # every eligible service of this kind is taken: draw another kind
            kind = kinds[int(rng.integers(len(kinds)))]
            free = [s for s in eligible[kind] if s not in taken]
        service = free[int(rng.integers(len(free)))]
        taken.add(service)
        lo, hi = math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1])
        scale = round(math.exp(rng.uniform(lo, hi)), 2)
        offset = 0.0 if k == 0 else 60.0 * int(rng.integers(0, PAIR_GAP_MAX_MIN + 1))
        faults.append(DrawnFault(kind, service, scale, offset, scale_params(kind, base[kind], scale)))
    minute = 10 * int(rng.integers(0, 7 * 24 * 6))
    start = REFERENCE_WEEK + timedelta(minutes=minute)
    platform_seed = int(rng.integers(0, 2**31 - 1))
    if not faults:
        name = f"{index:03d}-control"
    else:
        name = f"{index:03d}-" + "+".join(f"{f.kind}-{f.service}" for f in faults)
    return Draw(index, name, not faults, tuple(faults), start, platform_seed)


def _epoch(dt: datetime) -> float:
    return dt.replace(tzinfo=UTC).timestamp()


def _probes(draw: Draw, model: PlatformModel, horizon_s: float) -> list[dict[str, Any]]:
    """The steady state: the gateway's errors and each root's signal, around the healthy model."""
    t0 = _epoch(draw.start)
    healthy = model.values(np.arange(t0 - SETTLE_S, t0 + horizon_s + 60.0, 60.0))
    gateway = float(healthy["gateway"]["error_rate"].max())
    probes = [
        {
            "name": "gateway-errors",
            "service": "gateway",
            "metric": "error_rate",
            "window": 300.0,
            "tolerance": {"max": round(max(0.03, 3 * gateway), 4)},
        }
    ]
    for f in draw.faults:
        metric, aggregate, window = SIGNAL[f.kind]
        lo, hi = float(healthy[f.service][metric].min()), float(healthy[f.service][metric].max())
        tolerance = {
            "latency_p99_ms": {"max": round(1.5 * hi, 1)},
            "memory_util": {"max": round(min(hi + 0.15, 0.95), 3)},
            "retrieval_precision": {"min": round(lo - 0.06, 3)},
        }.get(metric, {"max": round(max(0.02, 3 * hi), 4)})
        probes.append(
            {
                "name": f"{f.service}-{metric}",
                "service": f.service,
                "metric": metric,
                "aggregate": aggregate,
                "window": window,
                "tolerance": tolerance,
            }
        )
    return probes


def build_experiment(
    draw: Draw, seed: int, table: Mapping[tuple[str, str], Remedy], config: SynthConfig
) -> Experiment:
    """The experiment of one draw, with its derived expectation (see the module doc).

    Built as the mapping a file would hold and validated by the same model, so a generated
    experiment obeys exactly the rules of a hand-written one.
    """
    t0 = _epoch(draw.start)
    method: list[dict[str, Any]] = []
    expect: list[dict[str, Any]] = []
    approvals: list[dict[str, Any]] = []
    deadlines, verify_s, elapsed = [0.0], [0.0], 0.0
    for i, f in enumerate(draw.faults, start=1):
        if f.offset_s > elapsed:
            method.append({"pause": f.offset_s - elapsed})
            elapsed = f.offset_s
        name = f"f{i}"
        method.append({"fault": {"name": name, "kind": f.kind, "service": f.service, "params": f.params}})
        remedy = table[(f.kind, f.service)]
        within = deadline_s(remedy, f.kind, f.params, t0 + f.offset_s)
        deadlines.append(f.offset_s + within)
        verify_s.append(remedy.verify_deadline_s)
        actions = list(remedy.actions)
        expect.append(
            {
                "fault": name,
                "action": actions[0] if len(actions) == 1 else actions,
                "service": f.service,
                "within": within,
                "approval": "approved" if set(remedy.approval_actions) == set(actions) else "none",
            }
        )
        approvals.extend(
            {
                "action": a,
                "service": f.service,
                "decide": "approve",
                "after": APPROVE_AFTER_S,
                "approver": remedy.approver,
                "reason": "chaos campaign: the remedy its policy declares for the injected fault",
            }
            for a in remedy.approval_actions
        )
    tail = CONTROL_S if draw.control else TAIL_S
    method.append({"pause": tail})
    recovery = max(deadlines) + max(verify_s)
    model = PlatformModel(config, seed=draw.platform_seed)
    facts = "; ".join(f"{f.kind} on {f.service} at x{f.scale:.2f} of the shipped fault" for f in draw.faults)
    kinds = ["control"] if draw.control else sorted({f.kind for f in draw.faults})
    gateway_errors = {"name": "gateway-errors", "service": "gateway", "metric": "error_rate"}
    return Experiment.model_validate(
        {
            "title": f"campaign {seed} #{draw.index}: {draw.label}, {draw.when}",
            "description": f"Drawn by the chaos campaign of seed {seed} (experiment {draw.index}): "
            + (facts or "a quiet control, nothing is injected and every action is a false one")
            + f"; starts {draw.when}, platform seed {draw.platform_seed}.",
            "tags": ["campaign", f"seed-{seed}", *kinds, *(["pair"] if len(draw.faults) == 2 else [])],
            "clock": {"start": draw.start, "settle": SETTLE_S},
            "platform": {"seed": draw.platform_seed},
            "steady_state_hypothesis": {
                "title": "users are served and every root's signal is back",
                "probes": _probes(draw, model, elapsed + tail + recovery),
            },
            "method": method,
            "expect": expect,
            "approvals": approvals,
            "safeguards": [
                {
                    "name": "total-outage",
                    "probe": {**gateway_errors, "window": 600.0, "tolerance": {"max": 0.95}},
                    "grace": 600.0,
                }
            ],
            "recovery_timeout": recovery,
            "control": draw.control,
        }
    )


def generate_campaign(
    n: int,
    seed: int,
    *,
    policies: Any = None,
    config: SynthConfig | None = None,
) -> Campaign:
    """``n`` experiments drawn from ``seed`` against ``policies`` (default: the shipped rules/)."""
    if n < 1:
        raise InputError(f"a campaign needs at least one experiment, got --n {n}", hint="e.g. --n 50")
    if policies is None:
        from engine.chaos.api import RULES_DIR
        from engine.policy.loader import load_policies

        policies = load_policies(RULES_DIR)
    cfg = config or load_config()
    table = remedies(policies)
    eligible, uncovered = eligibility(cfg, table)
    if not eligible:
        raise InputError(
            "no policy declares a remedy for any fault kind",
            hint="name a policy after the kind it heals, e.g. `policy: memory-leak`",
        )
    base = base_faults()
    items = []
    for i in range(n):
        draw = _draw(seed, i, eligible, base)
        items.append(Generated(draw, build_experiment(draw, seed, table, cfg)))
    return Campaign(seed, items, eligible, uncovered, table)


def write_campaign(campaign: Campaign, out_dir: Path) -> list[Path]:
    """Write each experiment as YAML (``experiments/NAME.yaml``) and ``campaign.json``; read each back.

    Reading the files back with ``load_experiment`` is the same validation ``selfheal chaos
    validate`` runs, so a generated experiment is held to the rules of a hand-written one.
    """
    folder = out_dir / "experiments"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for g in campaign.items:
        path = folder / f"{g.draw.name}.yaml"
        path.write_text(f"# {g.experiment.title}\n" + dump_experiment(g.experiment))
        load_experiment(path)
        paths.append(path)
    (out_dir / "campaign.json").write_text(json.dumps(campaign.manifest(), indent=1, default=str))
    return paths
