"""Run a chaos experiment: simulated platform + the real engine, faults, approvals, a verdict.

The shape of a run (all times are platform time unless said otherwise):

1. the platform starts ``warm-up`` before the method with a healthy history, pushed to the engine
   as fast as it scores it (the online features need their windows full before the first row);
2. the clock then runs at ``speed``; a pump thread produces each 10-second tick and pushes it to
   the engine's ``POST /v1/telemetry`` (what an exporter or remote-write agent would do);
3. the hypothesis is checked ("before"), the method runs (faults through the platform's admin API,
   pauses), while safeguards are watched and approval requests answered through the engine's
   authenticated HTTP API as the experiment says;
4. the runner waits for the expected remediations and the hypothesis ("after"), runs the rollbacks,
   and stops everything;
5. the result lines faults up with what the engine did (journal + the engine's notifications).

The engine is ``engine.runtime``'s ``Engine`` served in a thread, with its decisions' durations
converted to wall time (``engine.chaos.timescale``). Its journal is the run's journal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from engine.chaos.experiment import ApprovalAnswer, Experiment, FaultStep, PauseStep, Probe
from engine.diagnosis.signature import WARMUP_S as DIAGNOSIS_WARMUP_S
from engine.errors import InputError, RuntimeEngineError
from engine.simulation.clock import ScaledClock
from engine.simulation.live import Point, SimulatedPlatform
from engine.simulation.server import PlatformServer

log = logging.getLogger(__name__)

PUMP_INTERVAL_S = 0.02  # wall seconds between two pushes of fresh ticks
POLL_S = 0.02  # wall seconds between two checks of the runner loop


@dataclass
class Timeline:
    """What happened, in platform time: the material of the report and the MLflow run."""

    points: dict[tuple[str, str], list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    scores: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    notes: list[dict[str, Any]] = field(default_factory=list)  # engine notifications and runner steps

    def note(self, ts: float, kind: str, data: dict[str, Any] | None = None, **extra: Any) -> None:
        """Record one happening; keys of ``data`` that clash with ts/kind keep a ``data_`` prefix."""
        body = {**(data or {}), **extra}
        for key in ("ts", "kind"):
            if key in body:
                body[f"data_{key}"] = body.pop(key)
        self.notes.append({"ts": ts, "kind": kind, **body})


@dataclass
class RunContext:
    """The live pieces of one run (exposed to callers that want to look inside, e.g. tests)."""

    clock: ScaledClock
    platform: SimulatedPlatform
    server: PlatformServer
    engine_url: str
    token: str
    engine: Any
    journal_path: Path
    wall0: float = 0.0  # time.time() when the clock (re)started
    sim0: float = 0.0

    def to_platform(self, wall_ts: float) -> float:
        """A journal timestamp (wall, epoch s) as platform time."""
        return self.sim0 + self.clock.speed * (wall_ts - self.wall0)


def _epoch(dt: Any) -> float:
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


class _Pump:
    """Produces ticks up to the clock's now and pushes them to the engine; one daemon thread."""

    def __init__(self, ctx: RunContext, timeline: Timeline) -> None:
        self.ctx = ctx
        self.timeline = timeline
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.error: BaseException | None = None
        self._client = httpx.Client(timeout=30.0)
        self._encoded: dict[tuple[str, str], str] = {}
        self._thread = threading.Thread(target=self._run, name="chaos-pump", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=10)
        self._client.close()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.paused.is_set():
                    points = self.ctx.platform.advance_to(self.ctx.clock.now())
                    if points:
                        self.push(points)
                self.stop.wait(PUMP_INTERVAL_S)
        except BaseException as exc:  # surfaced by the runner loop
            log.exception("telemetry pump failed")
            self.error = exc

    def _names(self, service: str, metric: str) -> str:
        """The JSON of a series' names, encoded once: a warm-up pushes ~80k points, and one
        ``json.dumps`` per point cost more wall time than the engine took to score them."""
        key = (service, metric)
        if key not in self._encoded:
            self._encoded[key] = f'"service":{json.dumps(service)},"metric":{json.dumps(metric)}'
        return self._encoded[key]

    def push(self, points: list[Point]) -> None:
        """POST points as NDJSON; a 429 (engine busy) is retried after its Retry-After."""
        record = self.timeline.points
        for ts, service, metric, value in points:
            record[(service, metric)].append((ts, value))
        for i in range(0, len(points), 50_000):
            chunk = points[i : i + 50_000]
            body = "\n".join(f'{{"ts":{ts!r},{self._names(s, m)},"value":{v!r}}}' for ts, s, m, v in chunk)
            while True:
                r = self._client.post(
                    f"{self.ctx.engine_url}/v1/telemetry",
                    content=body,
                    headers={"content-type": "application/x-ndjson"},
                )
                if r.status_code != 429:
                    break
                time.sleep(min(float(r.headers.get("Retry-After", "1")), 0.2))
            if r.status_code != 202:
                raise RuntimeEngineError(f"the engine refused telemetry: HTTP {r.status_code} {r.text[:200]}")


def probe_value(timeline: Timeline, probe: Probe, now: float) -> float | None:
    """The probe's aggregate over (now - window, now]; None when no sample falls in the window."""
    series = timeline.points.get((probe.service, probe.metric), [])
    values: list[float] = []
    for ts, v in reversed(series):
        if ts <= now - probe.window:
            break
        if ts <= now:
            values.append(v)
    if not values:
        return None
    arr = np.asarray(values)
    return float(
        {
            "mean": np.mean,
            "max": np.max,
            "min": np.min,
            "p95": lambda a: np.quantile(a, 0.95),
            "last": lambda a: a[0],
        }[probe.aggregate](arr)
    )


def check_probes(timeline: Timeline, probes: list[Probe], now: float) -> list[dict[str, Any]]:
    out = []
    for p in probes:
        value = probe_value(timeline, p, now)
        out.append(
            {
                "probe": p.name,
                "service": p.service,
                "metric": p.metric,
                "value": value,
                "tolerance": p.tolerance.describe(),
                "ok": value is not None and p.tolerance.holds(value),
                "ts": now,
            }
        )
    return out


class ChaosRun:
    """One run of one experiment. ``run()`` returns the raw record the report is built from."""

    def __init__(
        self,
        experiment: Experiment,
        *,
        out_dir: Path,
        components: Any,
        name: str = "experiment",
        speed: float | None = None,
        echo: Callable[[str], None] = log.info,
    ) -> None:
        self.exp = experiment
        self.out_dir = out_dir
        self.components = components
        self.name = name
        self.speed = float(speed or experiment.clock.speed)
        self.echo = echo
        self.timeline = Timeline()
        self._engine_notes: queue.Queue[tuple[float, str, dict[str, Any]]] = queue.Queue()
        self.ctx: RunContext | None = None
        self.record: dict[str, Any] = {}
        self._pending: list[tuple[float, dict[str, Any]]] = []  # approval requests not answered yet
        self._approver_tokens: dict[str, str] = {}  # approver name -> its engine token (set per run)
        self._during: list[dict[str, Any]] = []  # hypothesis samples while the method runs
        self._next_sample = 0.0

    # --------------------------------------------------------------------------- setup
    def _start(self) -> tuple[RunContext, _Pump]:
        from engine.chaos.timescale import TimeScaledPolicies
        from engine.runtime.components import RegistryActions
        from engine.runtime.config import load_settings
        from engine.runtime.server import build_engine, serve_in_thread

        exp = self.exp
        start = _epoch(exp.clock.start)
        # the detector's first rows, then the diagnosis' baselines learning from them, then the settle
        fine = DIAGNOSIS_WARMUP_S + exp.clock.settle + 300.0
        warm = self.components.pipeline.warmup_s + fine
        clock = ScaledClock(start - warm, speed=self.speed)
        platform = SimulatedPlatform(
            clock,
            seed=exp.platform.seed,
            replicas={n: info.replicas for n, info in self.components.topology.items()},
            restart_s=exp.platform.restart_s,
            index_rebuild_s=exp.platform.index_rebuild_s,
            rollout_s=exp.platform.rollout_s,
        )
        server = PlatformServer(platform, port=0).start()
        self.components.actions = RegistryActions(_targets(server.url))
        self.components.policies = TimeScaledPolicies(self.components.policies, self.speed)
        token = secrets.token_urlsafe(16)
        # each approver the experiment speaks for gets a token of its own: the engine records the
        # token's name as the approver and refuses the shared token where a policy names approvers
        self._approver_tokens = {a.approver: secrets.token_urlsafe(16) for a in exp.approvals}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        journal = self.out_dir / "engine.sqlite"
        if journal.exists():  # its cooldowns and decisions would leak into this run's verdict
            raise InputError(
                f"{self.out_dir} already holds a run (its engine journal {journal.name})",
                hint="give every run a folder of its own (another --out), or delete that folder",
            )
        settings = load_settings(
            overrides={
                "port": 0,
                "token": token,
                "approver_tokens": self._approver_tokens,
                "tick_s": 0.02,
                "verify_interval_s": 0.02,
                "journal": str(journal),
                "dead_letter": str(self.out_dir / "dead-letter.ndjson"),
                "replay_horizon_s": 0.0,
            },
            environ={},
        )
        try:
            engine = build_engine(self.components, settings, self.out_dir)
            engine.listeners.append(self._on_engine)
            running = serve_in_thread(engine)
        except BaseException:
            server.stop()
            raise
        ctx = RunContext(clock, platform, server, running.url, token, running, journal)
        self.ctx = ctx
        pump = _Pump(ctx, self.timeline)
        # warm-up: a healthy history up to the method's start, pushed as fast as the engine scores it
        # (its journal rows are stamped with wall time, so their platform times are only approximate)
        platform.start_at(start - warm)
        self.echo(f"warm-up: {warm / 3600:.1f} h of healthy platform time")
        try:
            t = start - warm
            while t < start - 1e-6:
                # hours at a time, then the last ``fine`` seconds a minute at a time: a tick of an hour's
                # points leaves one latest value per series, and the diagnosis' baselines learn a
                # service's normal from those latest values, row by row
                coarse = t < start - fine - 1e-6
                t = min(start - fine, t + 3600.0) if coarse else min(start, t + 60.0)
                pump.push(platform.advance_to(t))
                if not coarse:
                    _wait(lambda: engine.queue.depth == 0, 120.0, "the engine to score the warm-up")
            _wait(lambda: engine.queue.depth == 0, 120.0, "the engine to score the warm-up")
        except BaseException:
            pump.close()
            running.stop(drain=False)
            server.stop()
            raise
        clock.restart(start)
        ctx.wall0, ctx.sim0 = time.time(), start
        pump.start()
        return ctx, pump

    def _on_engine(self, kind: str, data: dict[str, Any]) -> None:
        """Engine notifications (scoring/supervisor threads): stamp with platform time, hand over."""
        if self.ctx is None:
            return
        now = self.ctx.clock.now()
        if kind == "anomaly":
            data = {k: data[k] for k in ("service", "score", "threshold", "ts", "window_end", "contributing")}
        self._engine_notes.put((now, kind, data))

    # --------------------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        """Run the experiment; the hosted engine's log goes to ``engine.log`` in the run folder.

        Why not the caller's stderr: a chaos run exists to make the engine meet faults, so its
        warnings (an action not verified, an escalation) are the experiment's material, judged in
        the report and the journal beside that log; on stderr they read as the command's own
        problems, in the middle of the progress lines (``selfheal demo`` showed four).
        """
        with _engine_log(self.out_dir / "engine.log"):
            return self._run()

    def _run(self) -> dict[str, Any]:
        exp = self.exp
        ctx, pump = self._start()
        aborted: str | None = None
        injected: dict[str, dict[str, Any]] = {}
        probes = exp.steady_state_hypothesis.probes
        try:
            before = check_probes(self.timeline, probes, ctx.clock.now())
            self.timeline.note(ctx.clock.now(), "hypothesis", phase="before", results=before)
            self.echo("steady state before: " + ("holds" if all(r["ok"] for r in before) else "BROKEN"))
            if not all(r["ok"] for r in before):
                aborted = "the steady state did not hold before the method"
            else:
                for step in exp.method:
                    if isinstance(step, FaultStep):
                        f = step.fault
                        r = httpx.post(
                            f"{ctx.server.url}/admin/{f.service}/faults",
                            json={"kind": f.kind, "params": dict(f.params)},
                            headers={"Idempotency-Key": f"{self.name}:{f.name}"},
                        )
                        r.raise_for_status()
                        fid = r.json()["fault_id"]
                        injected[f.name] = {"fault_id": fid, "at": ctx.clock.now(), "spec": f}
                        self.timeline.note(
                            ctx.clock.now(),
                            "fault",
                            name=f.name,
                            fault_kind=f.kind,
                            service=f.service,
                            fault_id=fid,
                        )
                        self.echo(f"fault {f.name}: {f.kind} on {f.service}")
                    elif isinstance(step, PauseStep):
                        aborted = self._wait_platform(ctx, pump, step.pause, lambda: False)
                        if aborted:
                            break
                if not aborted:
                    deadline = max(
                        [ctx.clock.now()]
                        + [injected[e.fault]["at"] + e.within for e in exp.expect if e.fault in injected]
                    )

                    def done() -> bool:
                        return ctx.clock.now() >= deadline and self._settled(ctx) and self._holds(ctx)

                    aborted = self._wait_platform(ctx, pump, exp.recovery_timeout, done, until_abs=deadline)
            after_phase = exp.steady_state_hypothesis.check_after
            after: list[dict[str, Any]] = []
            if not aborted and after_phase == "method":
                after = check_probes(self.timeline, probes, ctx.clock.now())
                self.timeline.note(ctx.clock.now(), "hypothesis", phase="after", results=after)
            self._rollbacks(ctx, reason="aborted" if aborted else "end of the method")
            if not aborted and after_phase == "rollbacks":
                self._wait_platform(ctx, pump, exp.recovery_timeout, lambda: self._holds(ctx))
                after = check_probes(self.timeline, probes, ctx.clock.now())
                self.timeline.note(ctx.clock.now(), "hypothesis", phase="after", results=after)
            self._drain_notes(ctx)
        finally:
            pump.close()
            end = ctx.clock.now()
            ctx.engine.stop(drain=False)
            ctx.server.stop()
        self.record = {
            "name": self.name,
            "experiment": exp.model_dump(mode="json"),
            "speed": self.speed,
            "started": _epoch(exp.clock.start),
            "ended": end,
            "before": before,
            "during": _during_summary(self._during),
            "after": after,
            "aborted": aborted,
            "injected": {k: {"fault_id": v["fault_id"], "at": v["at"]} for k, v in injected.items()},
            "faults": [f.as_dict() for f in ctx.platform.faults],
            "admin": [
                {
                    "ts": a.ts,
                    "service": a.service,
                    "op": a.op,
                    "body": a.body,
                    "response": a.response,
                    "key": a.idempotency_key,
                }
                for a in ctx.platform.admin_log
            ],
            "notes": self.timeline.notes,
            "journal": _read_journal(ctx),
            "threshold": float(self.components.pipeline.threshold_),
            "detector": self.components.pipeline.detector,
            "bundle_version": self.components.bundle_version,
            "journal_path": str(ctx.journal_path),
            "series": self._series(),
            "scores": {s: [list(x) for x in v] for s, v in self.timeline.scores.items()},
        }
        return self.record

    def _series(self) -> dict[str, list[list[float]]]:
        """The metrics the report draws and the probes read, from 10 minutes before the method."""
        from engine.chaos.report import KEY_METRICS

        keep = {(s, m) for s, ms in KEY_METRICS.items() for m in ms}
        keep |= {(p.service, p.metric) for p in self.exp.steady_state_hypothesis.probes}
        since = _epoch(self.exp.clock.start) - 600.0
        return {
            f"{s}|{m}": [[t, v] for t, v in pts if t >= since]
            for (s, m), pts in self.timeline.points.items()
            if (s, m) in keep
        }

    def _settled(self, ctx: RunContext) -> bool:
        """No action of the engine is still under way or being verified (answers are in)."""
        from engine.runtime.journal import DecisionStatus

        journal = ctx.engine.engine.journal
        return not journal.decisions_with_status(list(DecisionStatus.ACTIVE)) and not self._pending

    def _holds(self, ctx: RunContext) -> bool:
        return all(
            r["ok"]
            for r in check_probes(self.timeline, self.exp.steady_state_hypothesis.probes, ctx.clock.now())
        )

    def _wait_platform(
        self,
        ctx: RunContext,
        pump: _Pump,
        duration: float,
        done: Callable[[], bool],
        *,
        until_abs: float | None = None,
    ) -> str | None:
        """Let platform time pass (answering approvals, watching safeguards); the abort reason or None."""
        end = ctx.clock.now() + duration
        if until_abs is not None:
            end = max(end, until_abs)
        failing_since: dict[str, float] = {}
        while ctx.clock.now() < end:
            if pump.error is not None:
                raise RuntimeEngineError(f"the telemetry pump failed: {pump.error}")
            self._drain_notes(ctx)
            self._answer_approvals(ctx)
            now = ctx.clock.now()
            if now >= self._next_sample:  # the hypothesis during the run, once a platform minute
                self._during.extend(check_probes(self.timeline, self.exp.steady_state_hypothesis.probes, now))
                self._next_sample = now + 60.0
            for sg in self.exp.safeguards:
                (res,) = check_probes(self.timeline, [sg.probe], now)
                if res["value"] is not None and not res["ok"]:
                    first = failing_since.setdefault(sg.name, now)
                    if now - first >= sg.grace:
                        reason = (
                            f"safeguard {sg.name}: {sg.probe.metric} of {sg.probe.service} = "
                            f"{res['value']:.4g}, tolerance {res['tolerance']}"
                        )
                        self.timeline.note(now, "abort", reason=reason)
                        self.echo("ABORT: " + reason)
                        return reason
                else:
                    failing_since.pop(sg.name, None)
            if done():
                return None
            time.sleep(POLL_S)
        return None

    def _drain_notes(self, ctx: RunContext) -> None:
        scores = self.timeline.scores
        now = ctx.clock.now()
        for service, (score, _) in list(ctx.engine.engine.observations.scores.items()):
            series = scores[service]
            if not series or series[-1][1] != score:
                series.append((now, score))
        while True:
            try:
                ts, kind, data = self._engine_notes.get_nowait()
            except queue.Empty:
                return
            self.timeline.note(ts, kind, data)
            if kind == "approval_requested":
                self._pending.append((ts, data))
            elif kind in (
                "dispatch",
                "verified",
                "verification_failed",
                "action_failed",
                "approval_expired",
                "blocked",
            ):
                self.echo(f"engine: {kind} {data.get('action', '')} {data.get('decision_id', '')}")

    def _answer_approvals(self, ctx: RunContext) -> None:
        """Answer requests the experiment has an answer for, through the engine's HTTP API."""
        from engine.runtime.client import EngineClient

        if not self._pending:
            return
        keep: list[tuple[float, dict[str, Any]]] = []
        for asked, data in self._pending:
            decision = ctx.engine.engine.journal.decision(data["decision_id"]) or {}
            answer = _answer_for(self.exp.approvals, decision)
            if answer is None or answer.decide == "ignore":
                self.timeline.note(
                    asked, "approval_ignored", decision_id=data["decision_id"], service=decision.get("target")
                )
                continue
            if ctx.clock.now() < asked + answer.after:
                keep.append((asked, data))
                continue
            client = EngineClient(ctx.engine_url, self._approver_tokens.get(answer.approver, ctx.token))
            try:
                if answer.decide == "approve":
                    client.approve(data["approval_id"], answer.reason)
                else:
                    client.reject(data["approval_id"], answer.reason)
                self.timeline.note(
                    ctx.clock.now(),
                    f"approval_{answer.decide}_sent",
                    approval_id=data["approval_id"],
                    approver=answer.approver,
                    service=decision.get("target"),
                    action=decision.get("action"),
                )
                what = f"{decision.get('action')} on {decision.get('target')}"
                self.echo(f"experiment: {answer.decide} {what} as {answer.approver}")
            except RuntimeEngineError as exc:  # expired meanwhile: the engine refuses, the journal says so
                self.timeline.note(
                    ctx.clock.now(), "approval_refused", approval_id=data["approval_id"], error=str(exc)
                )
        self._pending = keep

    def _rollbacks(self, ctx: RunContext, *, reason: str) -> None:
        for rb in self.exp.rollbacks:
            services = list(ctx.platform.services) if rb.clear_faults == "all" else [rb.clear_faults]
            for service in services:
                if not any(f.fault.service == service and f.cleared_at is None for f in ctx.platform.faults):
                    continue
                cleared = httpx.delete(f"{ctx.server.url}/admin/{service}/faults").json().get("cleared", 0)
                if cleared:
                    self.timeline.note(
                        ctx.clock.now(), "rollback", service=service, cleared=cleared, reason=reason
                    )
                    self.echo(f"rollback: cleared {cleared} fault(s) on {service}")


def _during_summary(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per probe: how many of the per-minute samples held, and the worst value seen."""
    out: dict[str, dict[str, Any]] = {}
    for s in samples:
        row = out.setdefault(
            s["probe"],
            {"probe": s["probe"], "tolerance": s["tolerance"], "samples": 0, "held": 0, "values": []},
        )
        row["samples"] += 1
        row["held"] += bool(s["ok"])
        if s["value"] is not None:
            row["values"].append(s["value"])
    for row in out.values():
        values = row.pop("values")
        row["min"] = min(values) if values else None
        row["max"] = max(values) if values else None
    return list(out.values())


def _answer_for(answers: list[ApprovalAnswer], decision: dict[str, Any]) -> ApprovalAnswer | None:
    for a in answers:
        if a.action == decision.get("action") and a.service == decision.get("target"):
            return a
    return None


def _targets(url: str) -> Any:
    from engine.actions.targets import ServiceTarget, SimulatorConfig, TargetsConfig

    return TargetsConfig(defaults=ServiceTarget(backend="simulator", simulator=SimulatorConfig(url=url)))


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeEngineError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _read_journal(ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    """Every journal row of the run, with platform-time stamps (``*_pts``) beside the wall ones."""
    from engine.runtime.journal import KINDS, Journal

    out: dict[str, list[dict[str, Any]]] = {}
    with Journal(ctx.journal_path, read_only=True) as j:
        for kind in KINDS:
            rows = j.recent(kind, limit=10_000)
            for row in rows:
                for key, value in list(row.items()):
                    stamp = key.endswith("_ts") or key == "ts"
                    if stamp and isinstance(value, int | float) and not math.isnan(value):
                        row[f"{key}_pts"] = ctx.to_platform(float(value))
            out[kind] = sorted(
                rows, key=lambda r: r.get("ts") or r.get("created_ts") or r.get("started_ts") or 0
            )
    return out


@contextlib.contextmanager
def _engine_log(path: Path) -> Iterator[None]:
    """The ``engine.runtime`` loggers write to ``path`` (not further up) while the block runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    runtime = logging.getLogger("engine.runtime")
    runtime.addHandler(handler)
    propagate, runtime.propagate = runtime.propagate, False
    try:
        yield
    finally:
        runtime.propagate = propagate
        runtime.removeHandler(handler)
        handler.close()
