"""kill -9, again and again: nothing approved is lost, nothing is done twice, nothing is left unknown.

A real ``selfheal run`` process (components: ``tests/test_runtime_support.py:build_components``, a
fitted pipeline and policies compiled into durable-rules) acts on the simulated platform
(``engine.simulation``: its admin API, which applies a POST once per idempotency key). This
process pushes telemetry whose anomaly bursts trigger, every few seconds of platform time:

- ``restart`` of inference-a (low risk, runs at once; ``simulator`` backend, deduplicating);
- ``scale`` of feature-store (low risk; a plain ``http`` target *not* known to deduplicate, so a
  call a crash leaves unanswered cannot be asked again: it must be reported and escalated);
- ``rollback_model`` of vector-db (high risk: waits for an approval, which a thread here gives
  through the API with an approver's token as soon as it is listed).

The target answers each call after a random delay (it has acted already), so kills land with
calls in flight. A loop SIGKILLs the engine at a random moment after it is ready and starts it
again, ``SELFHEAL_BENCH_CRASH_RESTARTS`` times (default 30; ``SELFHEAL_BENCH_CRASH_UP_S``, default
``0.5,3``, is the range of seconds up drawn; every other kill then waits up to 5 s for a call to be
in flight at the target, so that case is never left to chance). Then the engine runs until
nothing is pending and stops with SIGTERM, and the run is checked (``CrashReport.problems``):

- approvals: requested (journal) vs answered (HTTP 200 here) vs lost: answered but not approved
  in the journal, approved but never executed, or listed by the API and missing from the journal;
- executions per idempotency key at the target: applied more than once, or sent more than once to
  the target that does not deduplicate (double executions); actions applied that the journal
  does not know of;
- journal integrity: ``PRAGMA integrity_check`` and the journal's invariants (nothing left
  'started' or 'ready', every key ``DECISION:KIND``, every execution's decision present, every
  approved decision past its approval);
- executions a crash left in flight: reconciled (asked again with the same key), or marked
  ``unknown`` and escalated (the engine's notification channel delivered it to the pager here);
  none left silently unknown.

Figures: restart-to-ready (process start to ``/readyz`` 200) median and p95, against the
engine's first start in the same run (an empty journal: nothing to recover).

Run: ``.venv/bin/python tests/benchmarks/run.py crash`` (``make bench`` runs it with the others).
The smaller loop in ``tests/test_crash_loop.py`` asserts the same checks.
"""

from __future__ import annotations

import ast
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from harness import Row  # noqa: E402
from test_runtime_support import T0, TOKEN, TOPOLOGY, AdminServer, EngineProcess, ndjson, service_points  # noqa: E402

from engine.runtime.journal import ApprovalStatus, DecisionStatus, ExecutionStatus, Journal  # noqa: E402
from engine.simulation.clock import ManualClock  # noqa: E402
from engine.simulation.live import SimulatedPlatform  # noqa: E402
from engine.simulation.server import PlatformServer  # noqa: E402

APPROVER, APPROVER_TOKEN = "alice", "alice-token-5678"
CYCLE_S = 12  # platform seconds between two bursts on the same service
BURSTS = {"inference_a": (2, 3), "vector_db": (5, 6), "feature_store": (8, 9)}  # seconds of a cycle
HOOK = "/admin/hook"  # the notification channel's path on the pager (AdminServer delays /admin paths)
PUSH_S = 0.08  # wall seconds between two pushes of one platform second (4 services x 2 metrics)

POLICY = """
policy: crash
version: 1
rules:
  - name: restart-inference
    when: {services: [inference-a]}
    then: {action: restart}
    safeguards: {cooldown: 1s, max_per_hour: 100000, max_per_hour_global: 1000000,
                 blast_radius: 1.0, max_concurrent: 100}
    verify: {steady_state: {score_below: 0.95}, deadline: 20s, on_failure: escalate}
  - name: scale-feature-store
    when: {services: [feature-store]}
    then: {action: scale, params: {delta: 1}}
    safeguards: {cooldown: 1s, max_per_hour: 100000, max_per_hour_global: 1000000,
                 blast_radius: 1.0, max_concurrent: 100}
    verify: {steady_state: {score_below: 0.95}, deadline: 20s, on_failure: escalate}
  - name: rollback-vector-db
    when: {services: [vector-db]}
    then: {action: rollback_model, params: {version: v1}}
    safeguards: {cooldown: 1s, max_per_hour: 100000, max_per_hour_global: 1000000, max_concurrent: 100}
    verify: {steady_state: {score_below: 0.95}, deadline: 20s, on_failure: escalate}
    approval: {ttl: 10m, approvers: [alice]}
"""


class Target(PlatformServer):
    """The simulated platform's admin API, counting requests and applications per idempotency key,
    answering each call after a random delay (the change is applied first), so that a kill often
    finds a call in flight."""

    def __init__(self, max_delay_s: float, seed: int) -> None:
        clock = ManualClock(T0)
        platform = SimulatedPlatform(clock, seed=seed)
        platform.start_at(T0)
        super().__init__(platform, port=0)
        self.max_delay_s = max_delay_s
        self.rng = random.Random(seed)
        self.received: Counter[str] = Counter()  # "service:op:KEY" -> requests
        self.applied: Counter[str] = Counter()  # "service:op:KEY" -> changes applied
        self.busy = 0
        self._count = threading.Lock()
        loud = self.httpd.handle_error

        def quiet(request: Any, client_address: Any) -> None:
            """A caller killed mid-answer is this benchmark's point, not an error worth a traceback."""
            if not isinstance(sys.exc_info()[1], ConnectionError):
                loud(request, client_address)

        self.httpd.handle_error = quiet  # type: ignore[method-assign]

    def once(self, key: str, apply: Callable[[], tuple[int, dict[str, Any]]]) -> tuple[int, dict[str, Any]]:
        def counted() -> tuple[int, dict[str, Any]]:
            with self._count:
                self.applied[key] += 1
            return apply()

        with self._count:
            self.received[key] += 1
            self.busy += 1
            delay = self.rng.uniform(0, self.max_delay_s)
        try:
            answer = super().once(key, counted)
            time.sleep(delay)
            return answer
        finally:
            with self._count:
                self.busy -= 1


def write_rules(folder: Path, target_url: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "topology.yaml").write_text(TOPOLOGY)
    (folder / "crash.yaml").write_text(POLICY)
    (folder / "targets.yaml").write_text(
        f"defaults:\n  backend: simulator\n  simulator: {{url: '{target_url}', timeout_s: 30}}\n"
        "services:\n"
        "  feature-store:\n"
        f"    backend: http\n    http: {{url: '{target_url}/admin/feature-store', timeout_s: 30}}\n"
    )
    return folder


def engine_at(tmp: Path, target_url: str, hook_url: str) -> EngineProcess:
    """``selfheal run`` on the crash policy, notifying escalations to the pager at ``hook_url``."""
    return EngineProcess(
        tmp,
        write_rules(tmp / "rules", target_url),
        config=f"approver_tokens: {{{APPROVER}: {APPROVER_TOKEN}}}\ntick_s: 0.02\nverify_interval_s: 0.1\n"
        "limits: {max_actions_per_hour: 1000000, max_failures_per_hour: 1000000, max_concurrent: 1000}\n"
        f"notifications: [{{name: pager, url: '{hook_url}{HOOK}', events: [escalated]}}]\n",
    )


class Pusher(threading.Thread):
    """Telemetry, one platform second per request, in order; a refused or cut request is sent again."""

    def __init__(self, engine: EngineProcess) -> None:
        super().__init__(daemon=True, name="pusher")
        self.engine = engine
        self.t = T0
        self.halt = threading.Event()
        self.quiet = threading.Event()  # set: normal telemetry only (to let everything settle)
        self.in_request = False

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.halt.is_set():
                second = int(self.t - T0) % CYCLE_S
                quiet = self.quiet.is_set()
                burst = {} if quiet else {s: True for s, ks in BURSTS.items() if second in ks}
                body = ndjson(list(service_points(self.t, 1, **burst)))
                self.in_request = True
                try:
                    r = client.post(f"{self.engine.url}/v1/telemetry", content=body)
                    ok = r.status_code == 202
                except httpx.HTTPError:
                    ok = False
                self.in_request = False
                if ok:
                    self.t += 1
                self.halt.wait(PUSH_S if ok else 0.05)


class Approver(threading.Thread):
    """An operator who approves every request as soon as the API lists it."""

    def __init__(self, engine: EngineProcess) -> None:
        super().__init__(daemon=True, name="approver")
        self.engine = engine
        self.halt = threading.Event()
        self.listed: set[str] = set()  # approval ids the API listed as pending
        self.answered: set[str] = set()  # ids whose approve got 200
        self.conflicts: Counter[str] = Counter()  # 409s (already settled: e.g. approved before a crash)
        self.in_request = False

    def run(self) -> None:
        read = {"Authorization": f"Bearer {TOKEN}"}
        approve = {"Authorization": f"Bearer {APPROVER_TOKEN}"}
        with httpx.Client(timeout=5) as client:
            while not self.halt.wait(0.05):
                try:
                    pending = client.get(f"{self.engine.url}/v1/approvals", headers=read).json()
                except (httpx.HTTPError, ValueError):
                    continue
                for item in pending:
                    self.listed.add(item["id"])
                    self.in_request = True
                    try:
                        r = client.post(
                            f"{self.engine.url}/v1/approvals/{item['id']}/approve",
                            json={"reason": "crash loop"},
                            headers=approve,
                        )
                    except httpx.HTTPError:
                        continue
                    finally:
                        self.in_request = False
                    if r.status_code == 200:
                        self.answered.add(item["id"])
                    elif r.status_code == 409:
                        self.conflicts[item["id"]] += 1


@dataclass
class Checked:
    """What the journal and the target show after the loop (``_check``), and what is wrong."""

    approvals: dict[str, int]
    executions: dict[str, int]
    unknown: dict[str, int]
    recovered: Counter[str]  # summed over every start's recovery
    integrity: str
    problems: list[str]


@dataclass
class CrashReport:
    restarts: int
    ready_s: list[float]  # restart to ready, per restart
    first_ready_s: float  # the first start, on an empty journal
    kill_moments: Counter[str]  # what was going on at each kill
    checked: Checked
    workdir: Path  # the journal and the engine's log

    @property
    def problems(self) -> list[str]:
        return self.checked.problems

    def summary(self) -> str:
        c = self.checked
        return (
            f"{self.restarts} kill -9 restarts (at kill: {dict(self.kill_moments)}); "
            f"approvals {c.approvals}; executions {c.executions}; unknown {c.unknown}; "
            f"recovery {dict(c.recovered)}; integrity {c.integrity}; problems: {c.problems or 'none'} "
            f"(journal and engine log in {self.workdir})"
        )


def _moment(target: Target, approver: Approver, pusher: Pusher) -> list[str]:
    """What was going on when the kill landed (several at once is common)."""
    out = []
    if target.busy:
        out.append("action in flight")
    if approver.in_request:
        out.append("approving")
    if len(approver.listed) > len(approver.answered | set(approver.conflicts)):
        out.append("approval pending")
    if pusher.in_request:
        out.append("telemetry in flight")
    return out or ["idle"]


def crash_loop(
    restarts: int,
    up_s: tuple[float, float] = (0.5, 3.0),
    *,
    seed: int = 0,
    max_delay_s: float = 0.6,
    workdir: Path | None = None,
) -> CrashReport:
    """Run the loop (module doc) and check what it left; ``problems`` lists every violation.
    The journal and the engine's log stay in ``workdir`` (a new temporary folder by default)."""
    rng = random.Random(seed)
    tmp = workdir or Path(tempfile.mkdtemp(prefix="selfheal-crash-"))
    # The pager answers late too (AdminServer delays paths under /admin), so escalations are in
    # flight at some kills.
    with Target(max_delay_s, seed) as target, AdminServer(delay_s=max_delay_s / 2) as hooks:
        engine = engine_at(tmp, target.url, hooks.url)
        first = engine.start()
        pusher, approver = Pusher(engine), Approver(engine)
        pusher.start()
        approver.start()
        moments: Counter[str] = Counter()
        ready: list[float] = []
        try:
            for k in range(restarts):
                time.sleep(rng.uniform(*up_s))
                if k % 2:  # every other kill waits (a little) for a call in flight at the target
                    _until(lambda: target.busy > 0, timeout_s=5.0)
                moments.update(_moment(target, approver, pusher))
                engine.kill9()
                time.sleep(rng.uniform(0, 0.2))
                ready.append(engine.start())
            pusher.quiet.set()
            settled = _settle(engine, target)
            pusher.halt.set()
            approver.halt.set()
            pusher.join()
            approver.join()
            code = engine.stop()
        finally:
            pusher.halt.set()
            approver.halt.set()
            if engine.alive():
                engine.kill9()
        checked = _check(engine, target, hooks, approver)
    if not settled:
        checked.problems.append("the engine did not settle within 60 s after the last restart")
    if code != 0:
        checked.problems.append(f"the engine exited with {code} on SIGTERM")
    return CrashReport(restarts, ready, first, moments, checked, tmp)


def _until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def _settle(engine: EngineProcess, target: Target, timeout_s: float = 60.0) -> bool:
    """Wait until no approval is pending, no call in flight and no decision between states."""
    active = (DecisionStatus.AWAITING_APPROVAL, DecisionStatus.READY, DecisionStatus.EXECUTING,
              DecisionStatus.VERIFYING)  # fmt: skip

    def idle() -> bool:
        with Journal(engine.journal, read_only=True) as j:
            busy = j.decisions_with_status(active) or j.executions_with_status(ExecutionStatus.IN_FLIGHT)
        return not busy and not target.busy

    return _until(idle, timeout_s, interval_s=0.2)


def _check(engine: EngineProcess, target: Target, hooks: AdminServer, approver: Approver) -> Checked:
    problems: list[str] = []
    with sqlite3.connect(engine.journal) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    if integrity != "ok":
        problems.append(f"integrity_check: {integrity}")
    with Journal(engine.journal, read_only=True) as j:
        rows = {kind: j.recent(kind, limit=10**6) for kind in ("decisions", "approvals", "executions")}
    decisions = {d["id"]: d for d in rows["decisions"]}
    executions = rows["executions"]
    by_key = {e["idempotency_key"]: e for e in executions}
    actions_of = Counter(e["decision_id"] for e in executions if e["kind"] == "action")

    # The journal's invariants.
    for e in executions:
        if e["decision_id"] not in decisions:
            problems.append(f"execution {e['id']} has no decision {e['decision_id']}")
        if e["idempotency_key"] != f"{e['decision_id']}:{e['kind']}":
            problems.append(f"execution {e['id']} has key {e['idempotency_key']!r}")
        if e["status"] == ExecutionStatus.STARTED:
            problems.append(f"execution {e['id']} ({e['kind']} {e['action']}) left 'started'")
    for d in decisions.values():
        if d["status"] in (DecisionStatus.READY, DecisionStatus.EXECUTING):
            problems.append(f"decision {d['id']} left {d['status']!r}")

    # Approvals: requested vs answered vs lost.
    approvals = {a["id"]: a for a in rows["approvals"]}
    lost = set(approver.listed - set(approvals))  # listed by the API, gone from the journal
    lost |= {i for i in approver.answered if approvals.get(i, {}).get("status") != ApprovalStatus.APPROVED}
    for a in approvals.values():
        if a["decision_id"] not in decisions:
            problems.append(f"approval {a['id']} has no decision")
        elif a["status"] == ApprovalStatus.APPROVED and not actions_of[a["decision_id"]]:
            lost.add(a["id"])  # approved, never executed
        if a["status"] == ApprovalStatus.PENDING:
            problems.append(f"approval {a['id']} still pending after the run settled")
    if lost:
        problems.append(f"{len(lost)} approval(s) lost: {sorted(lost)}")
    approved = sum(a["status"] == ApprovalStatus.APPROVED for a in approvals.values())
    approval_figures = {
        "requested": len(approvals),
        "answered": len(approver.answered),
        "already settled (409 after a crash)": len(set(approver.conflicts) - approver.answered),
        "approved": approved,
        "lost": len(lost),
    }

    # Executions per idempotency key at the target.
    dedup_targets = ("inference-a", "vector-db")
    double = {k: n for k, n in target.applied.items() if n > 1}
    double |= {k: n for k, n in target.received.items() if n > 1 and not k.startswith(dedup_targets)}
    if double:
        problems.append(f"double executions at the target: {double}")
    unjournaled = [k for k in target.applied if k.split(":", 2)[2] not in by_key]
    if unjournaled:
        problems.append(f"actions applied that the journal does not know: {unjournaled}")
    execution_figures = {
        "actions journaled": sum(actions_of.values()),
        "keys applied at the target": len(target.applied),
        "keys asked again (deduplicated)": sum(n > 1 for n in target.received.values()),
        "double": len(double),
    }

    # Executions a crash left unknown: each escalated (the pager got it), none silently unknown.
    escalated = {c["body"]["decision_id"] for c in hooks.calls(HOOK) if c["body"]["kind"] == "escalated"}
    unknown = [e for e in executions if e["status"] == ExecutionStatus.UNKNOWN]
    silent = [e for e in unknown if e["decision_id"] not in escalated]
    if silent:
        problems.append(
            "executions left unknown without an escalation: "
            + ", ".join(f"{e['id']} ({e['kind']} {e['action']})" for e in silent)
        )
    recovered = _recovery_counts(engine.log)
    unknown_figures = {
        "reconciled (asked again)": recovered["reconciled"],
        "unknown": len(unknown),
        "unknown escalated": len(unknown) - len(silent),
        "left silently unknown": len(silent),
    }
    return Checked(approval_figures, execution_figures, unknown_figures, recovered, integrity, problems)


def _recovery_counts(log: Path) -> Counter[str]:
    """Sum of what every start's recovery did (its INFO line ``recovered from the journal: {...}``)."""
    total: Counter[str] = Counter()
    marker = "recovered from the journal: "
    for line in log.read_text(errors="replace").splitlines():
        if marker in line:
            total.update(ast.literal_eval(line.split(marker, 1)[1].strip()))
    return total


def _env_range(name: str, default: str) -> tuple[float, float]:
    low, high = (float(x) for x in os.environ.get(name, default).split(","))
    return low, high


def bench_crash(repeats: int) -> list[Row]:
    restarts = int(os.environ.get("SELFHEAL_BENCH_CRASH_RESTARTS", "30"))
    report = crash_loop(restarts, _env_range("SELFHEAL_BENCH_CRASH_UP_S", "0.5,3"))
    print(report.summary(), file=sys.stderr)
    c = report.checked
    verdict = "OK" if not c.problems else "FAILED: " + "; ".join(c.problems)[:500]
    p95 = statistics.quantiles(report.ready_s, n=20)[-1] if len(report.ready_s) > 1 else report.ready_s[0]
    return [
        Row("kill -9 restart -> ready median", "s", report.ready_s, "first start (empty journal)",
            [report.first_ready_s], higher_is_better=False, note=f"p95 {p95:.2f} s; {verdict}"),
        Row("kill -9 restarts", "restarts", [report.restarts], target=">= 30",
            note="at the kill: " + _note(dict(report.kill_moments.most_common()))),
        Row("approvals lost", "approvals", [c.approvals["lost"]], higher_is_better=False, target="0",
            note=_note(c.approvals)),
        Row("double executions", "keys", [c.executions["double"]], higher_is_better=False, target="0",
            note=_note(c.executions)),
        Row("executions left silently unknown", "executions", [c.unknown["left silently unknown"]],
            higher_is_better=False, target="0", note=f"{_note(c.unknown)}; journal integrity {c.integrity}"),
    ]  # fmt: skip


def _note(figures: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in figures.items())


BENCHMARKS = [bench_crash]


if __name__ == "__main__":
    from harness import render

    print(render(bench_crash(1)))
