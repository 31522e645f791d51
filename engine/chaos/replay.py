"""Shadow replay: run a bundle over stored history with no side effects, and judge it.

How a team tries a new detector or policy before promoting it: the history in the DuckDB store
goes through the engine's own stages, one feature interval per tick: scoring
(``engine.runtime.scoring``), event making (``engine.runtime.events``: contributing metrics, latest
metric values, health changes) and the policies (``engine.runtime.policies``, a fresh durable-rules
host from the bundle's compiled policies), so replay makes exactly the events and decisions an
engine fed the same points would. The engine's own deciding core (``engine.runtime.decider.enact``:
one remedy per incident, the safeguards, approvals) then says whether each decision would have
run, waited for approval, been blocked, or been dropped as a duplicate of a remedy under way;
actions are assumed to succeed and be verified at once, so an action is in flight and its remedy
under way only within its own tick (a second decision of the tick that meets ``max_concurrent`` is
reported blocked; the engine would run it once the first is verified). The history before ``since``
that the features need warms the stages up; only what happens from ``since`` on is reported.
Nothing is executed and no journal is written. The alarms are scored per service against the
incidents labeled in the store (``engine.evaluation.events.event_metrics``), and every decision is
classified by whether its target had a labeled incident at the time.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.bundle.signing import Trust

log = logging.getLogger(__name__)

INCIDENT_SLACK_S = 1800.0  # a decision this soon after an incident ended still belongs to it


@dataclass
class ReplayDecision:
    ts: float
    service: str
    target: str
    action: str
    rule: str
    risk: str
    outcome: str  # execute | approval | blocked | duplicate
    reason: str
    incident: str | None  # the labeled incident on the target at the time, if any

    @property
    def justified(self) -> bool:
        return self.incident is not None


@dataclass
class ReplayResult:
    bundle: str
    since: datetime
    until: datetime
    rows: int
    anomalies: int
    per_service: dict[str, dict[str, Any]]
    decisions: list[ReplayDecision] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)  # the anomaly events (AnomalyEvent) from since on

    @property
    def approvals(self) -> list[ReplayDecision]:
        return [d for d in self.decisions if d.outcome == "approval"]

    def totals(self) -> dict[str, Any]:
        windows = sum(m["n_windows"] for m in self.per_service.values())
        detected = sum(m["n_detected"] for m in self.per_service.values())
        executed = [d for d in self.decisions if d.outcome == "execute"]
        return {
            "rows": self.rows,
            "anomalies": self.anomalies,
            "incidents": windows,
            "incidents_detected": detected,
            "recall": detected / windows if windows else None,
            "decisions": len(self.decisions),
            "would_execute": len(executed),
            "would_ask_approval": len(self.approvals),
            "would_block": sum(d.outcome == "blocked" for d in self.decisions),
            "duplicates": sum(d.outcome == "duplicate" for d in self.decisions),
            "unjustified_actions": sum(not d.justified for d in executed),
        }

    def render(self) -> str:
        t = self.totals()
        lines = [
            f"shadow replay of {self.bundle} over [{self.since}, {self.until}) (no side effects)",
            f"  rows scored {t['rows']:,}, anomalous {t['anomalies']:,}",
            f"  incidents {t['incidents']}, detected {t['incidents_detected']}"
            + (f" (recall {t['recall']:.2f})" if t["recall"] is not None else ""),
            f"  decisions {t['decisions']}: would execute {t['would_execute']}, ask approval "
            f"{t['would_ask_approval']}, blocked {t['would_block']}, duplicates {t['duplicates']}; "
            f"actions with no incident on their target: {t['unjustified_actions']}",
            "",
            f"  {'service':<14} {'windows':>7} {'detected':>8} {'precision':>9} {'recall':>6} "
            f"{'delay s':>8} {'false/day':>9}",
        ]
        for service, m in sorted(self.per_service.items()):
            lines.append(
                f"  {service:<14} {m['n_windows']:>7} {m['n_detected']:>8} {_f(m['precision']):>9} "
                f"{_f(m['recall']):>6} {_f(m['mean_delay_s'], 0):>8} {_f(m['false_alarms_per_day'], 1):>9}"
            )
        if self.decisions:
            lines.append("")
            for d in self.decisions[:50]:
                lines.append(
                    f"  {_iso(d.ts)} {d.outcome:<8} {d.action} on {d.target} ({d.rule}, {d.risk})"
                    f" {'' if d.outcome in ('execute', 'approval') else d.reason}"
                    f"  incident: {d.incident or 'none'}"
                )
            if len(self.decisions) > 50:
                lines.append(f"  ... {len(self.decisions) - 50} more (see --out)")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "bundle": self.bundle,
                "since": self.since.isoformat(),
                "until": self.until.isoformat(),
                "totals": self.totals(),
                "per_service": self.per_service,
                "decisions": [asdict(d) for d in self.decisions],
            },
            indent=2,
            default=str,
        )


def _f(v: Any, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _iso(ts: float) -> str:
    return (datetime(1970, 1, 1) + timedelta(seconds=ts)).isoformat(timespec="minutes")


class _Ledger:
    """Executions the replay would have made (replay time), for the decider's safeguard counts."""

    def __init__(self) -> None:
        self.executions: deque[tuple[float, str]] = deque()

    def context(self, decisions: list[Any], now: float, replicas: Any) -> Any:
        """What ``enact`` sees at ``now``: the journal's counts as replay knows them (no action in
        flight, no failure, no remedy under way: earlier ones all succeeded at once), the engine's default
        global limits, the kill switch off and every policy in auto mode."""
        from engine.runtime import safeguards
        from engine.runtime.decider import Context
        from engine.runtime.journal import SafeguardCounts

        while self.executions and self.executions[0][0] < now - 86400:
            self.executions.popleft()
        hour_ago = now - 3600
        per_target: dict[str, tuple[float | None, int, int]] = {}
        for target in {d.target for d in decisions}:
            mine = [t for t, tgt in self.executions if tgt == target]
            per_target[target] = (max(mine) if mine else None, sum(t >= hour_ago for t in mine), 0)
        hour = sum(t >= hour_ago for t, _ in self.executions)
        counts = SafeguardCounts(per_target, {}, hour, 0, 0)
        return Context(now, counts, set(), False, safeguards.GlobalLimits(), (), replicas)


def replay_bundle(
    bundle: Path | str,
    db_path: Path | str,
    *,
    since: datetime,
    until: datetime,
    services: list[str] | None = None,
    progress: bool = False,
    trust: Trust | None = None,
) -> ReplayResult:
    """Replay a verified bundle over the store's history in [since, until) (module docstring).

    ``trust``: the keys the bundle may be signed with (``engine.bundle.load_bundle``'s default when None).
    """
    from engine.bundle import load_bundle

    loaded = load_bundle(bundle, trust=trust)
    return replay(
        loaded.detector,
        loaded.compiled,
        db_path,
        since=since,
        until=until,
        services=services,
        label=str(bundle),
        version=loaded.version,
        detector_version=loaded.detector_version,
        progress=progress,
    )


def replay(
    detector: Any,
    policies: Any,
    db_path: Path | str,
    *,
    since: datetime,
    until: datetime,
    services: list[str] | None = None,
    label: str = "detector",
    version: str = "replay",
    detector_version: str = "replay",
    progress: bool = False,
) -> ReplayResult:
    """Replay a fitted stream detector and policies (a ``PolicySet`` or its compiled form) over history."""
    from engine.diagnosis import DiagnosisStage, Signer, shipped_model
    from engine.errors import InputError
    from engine.policy.host import PolicyHost
    from engine.runtime.events import EventMaker, Observations
    from engine.runtime.policies import ask
    from engine.runtime.scoring import ScoringStage
    from engine.telemetry.store import TelemetryStore

    if until <= since:
        raise InputError(f"--until {until} is not after --since {since}", hint="give a later --until")
    interval = detector.interval_s
    warm = timedelta(seconds=detector.warmup_s)
    with TelemetryStore(db_path, read_only=True) as store:
        points = store.points(services=services, start=since - warm, end=until)
        incidents = store.incidents(services=services, start=since - timedelta(days=1), end=until)
    if points.is_empty():
        raise InputError(
            f"{db_path}: no telemetry between {since - warm} and {until}",
            hint="check `selfheal ingest`/`selfheal synth` and the time range",
        )
    host = PolicyHost(policies, tick_seconds=interval)
    topology = host.policy_set.topology
    kinds = shipped_model()  # what the engine runs (``engine.runtime.components``), version and all
    scoring = ScoringStage(detector, signer=Signer(kinds))
    events = EventMaker(
        detector=detector.detector,
        threshold=detector.threshold_,
        feature_names=list(detector.feature_names),
        bundle_version=version,
        detector_version=detector_version,
    )
    observations = Observations()
    diagnosis = DiagnosisStage(
        kinds,
        {name: tuple(spec.depends_on) for name, spec in topology.services.items()},
        version=kinds.version,
    )
    ledger = _Ledger()
    replicas = {name: spec.replicas for name, spec in topology.services.items()}
    windows = _windows(incidents)
    start_s = (since - datetime(1970, 1, 1)).total_seconds()
    decisions: list[ReplayDecision] = []
    anomalies: list[Any] = []
    scored_ts: list[float] = []
    scored_service: list[str] = []
    scored_alarm: list[bool] = []
    for tick in _ticks(points, interval, progress=progress):
        scored = scoring.step([(0.0, tick)])
        observations.saw(scored, tick[-1][0])
        made = diagnosis.step(scored, events.step(scored, observations))
        for row, alarm in zip(scored.rows, scored.alarms.tolist(), strict=True):
            if row.ts >= start_s:
                scored_ts.append(row.ts)
                scored_service.append(row.service)
                scored_alarm.append(alarm)
        if not (made.events or made.changes):
            continue
        anomalies += [e for e in made.events if e.ts >= start_s]
        decided = ask(host, made).decided
        for at, batch in groupby(decided, key=lambda d: start_s if d.window_end is None else d.window_end):
            if at >= start_s:  # before ``since``: warm-up only
                decisions += judge(list(batch), at, ledger, replicas, windows)
    if not scored_ts:
        raise InputError(
            f"no complete feature rows in [{since}, {until})",
            hint=f"the features need {warm} of history before --since; widen the range",
        )
    alarms = np.array(scored_alarm, dtype=bool)
    return ReplayResult(
        bundle=label,
        since=since,
        until=until,
        rows=len(scored_ts),
        anomalies=int(alarms.sum()),
        per_service=_per_service(np.array(scored_ts), np.array(scored_service), alarms, windows),
        decisions=decisions,
        events=anomalies,
    )


def _ticks(points: Any, interval: float, *, progress: bool) -> Any:
    """The store's points in time order, one feature interval per tick, as the engine takes them."""
    frame = points.sort("ts")
    ts = (frame["ts"].dt.epoch("us").to_numpy() / 1e6).tolist()
    columns = zip(
        ts, frame["service"].to_list(), frame["metric"].to_list(), frame["value"].to_list(), strict=True
    )
    ticks: Any = []
    current: list[tuple[float, str, str, float]] = []
    bucket = None
    for point in columns:
        b = point[0] // interval
        if b != bucket and current:
            ticks.append(current)
            current = []
        bucket = b
        current.append(point)
    if current:
        ticks.append(current)
    if progress:
        import sys

        from tqdm import tqdm

        ticks = tqdm(ticks, desc="replay", unit="tick", file=sys.stderr)
    return ticks


def judge(
    decided: list[Any],
    now: float,
    ledger: _Ledger,
    replicas: dict[str, int],
    windows: dict[str, list[tuple[float, float, str]]],
) -> list[ReplayDecision]:
    """One tick's decisions through the decider's core (``enact``), as the engine would enact them
    at ``now`` (module docstring), each with the labeled incident on its target at the time."""
    from engine.runtime.decider import enact
    from engine.runtime.journal import DecisionStatus

    ctx = ledger.context(decided, now, lambda target: replicas.get(target, 1))
    enactment = enact([(d, None) for d in decided], ctx)
    outcome: dict[str, tuple[str, str]] = {
        n["decision_id"]: (
            "duplicate",
            "the same remedy is under way on this target (one incident, one action)",
        )
        for kind, n in enactment.notes
        if kind == "duplicate"
    }
    for d, status, reason in enactment.records:
        if status == DecisionStatus.EXECUTING:
            outcome[d.id] = ("execute", "all safeguards passed")
        elif status == DecisionStatus.AWAITING_APPROVAL:
            ask = d.approval
            outcome[d.id] = (
                "approval",
                f"approval required (ttl {ask.ttl_s:.0f}s, on expiry {ask.on_expiry})",
            )
        else:
            outcome[d.id] = (str(status), reason or "")
    ledger.executions.extend((now, d.target) for d, _ in enactment.starts)
    out = []
    for decision in decided:
        verdict, reason = outcome[decision.id]
        incident = next(
            (
                kind
                for start, end, kind in windows.get(decision.target, [])
                if start <= now <= end + INCIDENT_SLACK_S
            ),
            None,
        )
        out.append(
            ReplayDecision(
                ts=now,
                service=decision.service,
                target=decision.target,
                action=decision.action,
                rule=decision.rule,
                risk=decision.risk,
                outcome=verdict,
                reason=reason,
                incident=incident,
            )
        )
    return out


def _windows(incidents: Any) -> dict[str, list[tuple[float, float, str]]]:
    out: dict[str, list[tuple[float, float, str]]] = {}
    for row in incidents.iter_rows(named=True):
        start = (row["start"] - datetime(1970, 1, 1)).total_seconds()
        end = (row["end"] - datetime(1970, 1, 1)).total_seconds()
        out.setdefault(row["service"], []).append((start, end, row["kind"]))
    return out


def _per_service(
    ts: np.ndarray,
    services: np.ndarray,
    alarms: np.ndarray,
    windows: dict[str, list[tuple[float, float, str]]],
) -> dict[str, dict[str, Any]]:
    """Event metrics per service: its rows' alarms (in time order) against its labeled incidents."""
    from engine.evaluation.events import event_metrics

    out: dict[str, dict[str, Any]] = {}
    stamps = (ts * 1e6).astype("int64").astype("datetime64[us]")
    for service in sorted(set(services.tolist())):
        mask = services == service
        spans = [
            (np.datetime64(int(s * 1e6), "us"), np.datetime64(int(e * 1e6), "us"))
            for s, e, _ in windows.get(service, [])
        ]
        order = np.argsort(stamps[mask], kind="stable")
        out[service] = event_metrics(stamps[mask][order], alarms[mask][order], spans).as_dict()
    return out
