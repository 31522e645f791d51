"""From a run's raw record to its result: per fault, time to detect and recover, actions, verdict.

Definitions (platform time; the report states them too):

- *detected*: the first anomaly event the engine emitted for the fault's service after injection;
  time to detect (TTD) = detected - injected.
- *recovered*: the moment the platform's signal was back, i.e. when the remediation removed the
  cause plus the fault's recovery time (the same rule that labels synthetic incidents). A fault
  the experiment's own rollback had to clear was not recovered by the engine. TTR = recovered -
  injected.
- *actions*: executed actions of the engine (journal ``executions`` of kind ``action``) on or after
  the injection, with the verification outcome; an executed action that no expectation asked for
  is a false or unnecessary action.
- *verdict*: passed when the hypothesis held before and after, no safeguard aborted, every
  expectation was met and (unless allowed) no unexpected action ran.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

EXECUTED = ("executing", "verifying", "verified", "verification_failed", "rolled_back")


@dataclass
class FaultResult:
    name: str
    kind: str
    service: str
    injected: float
    detected: float | None = None
    recovered: float | None = None
    cleared_by: str | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)
    approvals: list[dict[str, Any]] = field(default_factory=list)
    expectations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ttd_s(self) -> float | None:
        return None if self.detected is None else self.detected - self.injected

    @property
    def ttr_s(self) -> float | None:
        return None if self.recovered is None else self.recovered - self.injected

    @property
    def ok(self) -> bool:
        return all(e["met"] for e in self.expectations)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ttd_s=self.ttd_s, ttr_s=self.ttr_s, ok=self.ok)
        return out


@dataclass
class RunResult:
    name: str
    title: str
    verdict: str  # passed | failed | aborted
    reasons: list[str]
    faults: list[FaultResult]
    unexpected: list[dict[str, Any]]
    approvals: list[dict[str, Any]]
    before_ok: bool
    after_ok: bool
    record: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow and the benchmark."""
        out: dict[str, float] = {
            "passed": float(self.passed),
            "faults": float(len(self.faults)),
            "unexpected_actions": float(len(self.unexpected)),
            "approvals_asked": float(len(self.approvals)),
            "actions": float(sum(len(f.actions) for f in self.faults)),
        }
        for f in self.faults:
            if f.ttd_s is not None:
                out[f"ttd_s.{f.name}"] = f.ttd_s
            if f.ttr_s is not None:
                out[f"ttr_s.{f.name}"] = f.ttr_s
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "faults": [f.as_dict() for f in self.faults],
            "unexpected": self.unexpected,
            "approvals": self.approvals,
            "before_ok": self.before_ok,
            "after_ok": self.after_ok,
            "metrics": self.metrics(),
        }


def analyse(record: dict[str, Any]) -> RunResult:
    """Line faults up with the engine's journal and notifications; decide the verdict."""
    exp = record["experiment"]
    journal = record["journal"]
    notes = record["notes"]
    decisions = {d["id"]: d for d in journal.get("decisions", [])}
    approvals_by_decision: dict[str, list[dict[str, Any]]] = {}
    for a in journal.get("approvals", []):
        approvals_by_decision.setdefault(a["decision_id"], []).append(a)
    actions = [
        _action(e, decisions, journal) for e in journal.get("executions", []) if e.get("kind") == "action"
    ]
    faults_by_name = {s["fault"]["name"]: s["fault"] for s in exp["method"] if "fault" in s}
    platform_faults = {f["fault_id"]: f for f in record["faults"]}
    results: list[FaultResult] = []
    claimed: set[str] = set()
    for name, info in record["injected"].items():
        spec = faults_by_name[name]
        pf = platform_faults.get(info["fault_id"], {})
        fr = FaultResult(name, spec["kind"], spec["service"], info["at"], cleared_by=pf.get("cleared_by"))
        fr.detected = next(
            (
                n["ts"]
                for n in notes
                if n["kind"] == "anomaly" and n.get("service") == fr.service and n["ts"] >= fr.injected
            ),
            None,
        )
        by_engine = pf.get("cleared_by") and not str(pf["cleared_by"]).startswith("operator")
        if by_engine and pf.get("end") is not None:
            fr.recovered = float(pf["end"]) + float(pf.get("recovery_s") or 0.0)
        for e in [x for x in exp["expect"] if x["fault"] == name]:
            fr.expectations.append(_expectation(e, fr, actions, decisions, approvals_by_decision, claimed))
        fr.actions = [a for a in actions if a["execution_id"] in claimed and a["fault"] == name]
        fr.approvals = [
            _approval(a, decisions)
            for d in decisions.values()
            if d["target"] == fr.service and d["ts_pts"] >= fr.injected
            for a in approvals_by_decision.get(d["id"], [])
        ]
        results.append(fr)
    unexpected = [a for a in actions if a["execution_id"] not in claimed]
    all_approvals = [_approval(a, decisions) for a in journal.get("approvals", [])]
    before_ok = bool(record["before"]) and all(r["ok"] for r in record["before"])
    after_ok = bool(record["after"]) and all(r["ok"] for r in record["after"])
    reasons: list[str] = []
    if record.get("aborted"):
        reasons.append(f"aborted: {record['aborted']}")
    if not before_ok:
        reasons.append("the steady state did not hold before the method")
    if not record.get("aborted") and not after_ok:
        bad = [r["probe"] for r in record["after"] if not r["ok"]] or ["(not checked)"]
        reasons.append(f"the steady state did not come back: {', '.join(bad)}")
    for fr in results:
        reasons.extend(f"{fr.name}: {e['why']}" for e in fr.expectations if not e["met"])
    if unexpected and not exp.get("allow_unexpected_actions"):
        reasons.extend(f"unexpected action: {a['action']} on {a['target']} ({a['rule']})" for a in unexpected)
    verdict = "aborted" if record.get("aborted") else ("passed" if not reasons else "failed")
    return RunResult(
        name=record["name"],
        title=exp["title"],
        verdict=verdict,
        reasons=reasons,
        faults=results,
        unexpected=unexpected,
        approvals=all_approvals,
        before_ok=before_ok,
        after_ok=after_ok,
        record=record,
    )


def _action(execution: dict[str, Any], decisions: dict[str, Any], journal: dict[str, Any]) -> dict[str, Any]:
    d = decisions.get(execution["decision_id"], {})
    verification = next(
        (v for v in journal.get("verifications", []) if v["execution_id"] == execution["id"]), None
    )
    return {
        "execution_id": execution["id"],
        "decision_id": execution["decision_id"],
        "action": execution["action"],
        "target": execution.get("target") or d.get("target"),
        "service": d.get("service"),
        "rule": d.get("rule"),
        "risk": d.get("risk"),
        "decided": d.get("ts_pts"),
        "executed": execution.get("started_ts_pts"),
        "status": execution.get("status"),
        "decision_status": d.get("status"),
        "verification": None if verification is None else verification.get("status"),
        "verified_at": None if verification is None else verification.get("finished_ts_pts"),
        "fault": None,
    }


def _approval(a: dict[str, Any], decisions: dict[str, Any]) -> dict[str, Any]:
    d = decisions.get(a["decision_id"], {})
    return {
        "approval_id": a.get("id"),
        "decision_id": a["decision_id"],
        "action": d.get("action"),
        "target": d.get("target"),
        "status": a.get("status"),
        "approver": a.get("approver"),
        "reason": a.get("reason"),
        "asked": a.get("created_ts_pts"),
        "settled": a.get("decided_ts_pts"),
        "expires": a.get("expires_ts_pts"),
    }


def _expectation(
    e: dict[str, Any],
    fr: FaultResult,
    actions: list[dict[str, Any]],
    decisions: dict[str, Any],
    approvals: dict[str, list[dict[str, Any]]],
    claimed: set[str],
) -> dict[str, Any]:
    deadline = fr.injected + float(e["within"])
    out = {**e, "met": False, "remedied": False, "why": ""}
    wanted = [e["action"]] if isinstance(e["action"], str) else list(e["action"])
    what = " or ".join(wanted)
    matching = [
        d
        for d in decisions.values()
        if d["target"] == e["service"] and d["action"] in wanted and d["ts_pts"] >= fr.injected
    ]
    if e["approval"] != "none":
        statuses = [a["status"] for d in matching for a in approvals.get(d["id"], [])]
        if not statuses:
            out["why"] = f"no approval was asked for {what} on {e['service']}"
            return out
        if e["approval"] not in statuses:
            ended = ", ".join(statuses)
            out["why"] = f"approval for {what} on {e['service']} ended {ended}, expected {e['approval']}"
            return out
    runs = [
        a
        for a in actions
        if a["target"] == e["service"]
        and a["action"] in wanted
        and a["executed"] is not None
        and a["executed"] >= fr.injected
    ]
    if not e["executed"]:
        if runs:
            out["why"] = f"{what} on {e['service']} ran although it should not have"
            for a in runs:
                claimed.add(a["execution_id"])
                a["fault"] = fr.name
            return out
        out["met"] = True
        return out
    if not runs:
        out["why"] = f"no {what} on {e['service']} was executed"
        return out
    first = runs[0]
    for a in runs:
        claimed.add(a["execution_id"])
        a["fault"] = fr.name
    if first["executed"] > deadline:
        late = first["executed"] - fr.injected
        out["why"] = (
            f"{first['action']} on {e['service']} ran {late:.0f} s after the fault, limit {e['within']:.0f} s"
        )
        return out
    out["remedied"] = True  # the cause was acted on in time; whether the engine verified it is next
    if e["verified"] and first["verification"] != "verified":
        out["why"] = f"{first['action']} on {e['service']} was not verified ({first['verification']})"
        return out
    out["met"] = True
    return out
