"""The engine's stages on their own: given inputs, expected outputs; no threads, no HTTP.

Scoring, event making, the policy stage, the decider (with a real journal in tmp_path), the
supervisor and recovery. Everything is real: a fitted stream detector, policies compiled into a
durable-rules host, SQLite. Actions go to the tests' AdminServer on 127.0.0.1.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_runtime_support import (
    NORMAL,
    SERVICES,
    T0,
    AdminServer,
    fit_pipeline,
    points,
    wait_for,
    write_rules,
)

from engine.diagnosis import Signer, shipped_model
from engine.diagnosis.signature import METRICS, QUIET_Z, RECENT
from engine.features.online import FeatureRow
from engine.policy import PolicyHost, load_policies
from engine.records import ActionCall, AnomalyEvent, Decision, Diagnosis, Execution, Outcome
from engine.runtime import safeguards
from engine.runtime.components import RegistryActions, assemble
from engine.runtime.config import load_settings
from engine.runtime.decider import Committed, Decider, enact
from engine.runtime.events import EventMaker, Observations, TickEvents
from engine.runtime.executor import Executor
from engine.runtime.journal import DecisionStatus, ExecutionStatus, Journal
from engine.runtime.policies import Tick, ask
from engine.runtime.recovery import recover
from engine.runtime.scoring import Scored, ScoringStage
from engine.runtime.supervisor import Supervisor
from engine.runtime.writer import Writer


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return fit_pipeline()


def _tick(t0: float, seconds: int, **override: float) -> list[tuple[float, str, str, float]]:
    """Every service's points, second by second; ``override`` sets a service's latency."""
    tick = []
    for k in range(seconds):
        for service in SERVICES:
            for p in points(service, t0 + k, 1, seed=k):
                value = (
                    override.get(service.replace("-", "_"), p["value"])
                    if p["metric"] == "latency_p99_ms"
                    else p["value"]
                )
                tick.append((p["ts"], p["service"], p["metric"], value))
    return tick


def _feed(stage: ScoringStage, t0: float, seconds: int, **override: float) -> Scored:
    """One tick of ``_tick``'s points through ``stage``."""
    return stage.step([(1.0, _tick(t0, seconds, **override))])


# ------------------------------------------------------------------------------------ scoring


def _zscore_detector() -> Any:
    """A detector whose latency feature is a z-score over 3 buckets: 1e308 overflows it to infinity."""
    from engine.detectors.stream_config import StreamConfig
    from engine.features import FeatureSpec, OnlineFeatures
    from engine.testing.detectors import fit_on_rows

    features = {
        "interval": "1s",
        "metrics": {
            "latency_p99_ms": {"transforms": [{"kind": "zscore", "window": 3}]},
            "memory_util": {"transforms": ["raw"]},
        },
    }
    online, rows, rng = OnlineFeatures(FeatureSpec.model_validate(features)), [], np.random.default_rng(0)
    for k in range(400):
        for metric, (mean, sd) in NORMAL.items():
            rows += online.push(T0 - 10_000 + k, "train", metric, mean + rng.normal() * sd)
    config = StreamConfig.model_validate(
        {
            "groups": [{"name": "default", "features": features}],
            "model": {"class": "IForest", "params": {"n_estimators": 30}},
            "calibration": "ecdf",
        }
    )
    return fit_on_rows(config, np.array([r.values for r in rows]))


def _keys(items: Any) -> list[tuple[str, float]]:
    return sorted((r.service, r.ts) for r in items)


def test_one_huge_value_costs_only_its_own_row_not_the_tick() -> None:
    """Issue 18, item 2: error_rate 1e308 overflowed a feature to infinity, the detector refused
    the micro-batch and every service's rows of the tick went unscored. Now the features clamp
    it: the row scores at the top, every other row exactly as without it."""
    detector = _zscore_detector()
    clean, stage = ScoringStage(detector), ScoringStage(detector)
    _feed(clean, T0, 6)
    _feed(stage, T0, 6)
    expected = _feed(clean, T0 + 6, 2)
    scored = _feed(stage, T0 + 6, 2, gateway=1e308)
    assert _keys(scored.rows) == _keys(expected.rows) and scored.refused == []
    assert np.isfinite(scored.scores).all()
    assert scored.latest[("gateway", "latency_p99_ms")] == 1e308
    mine = {(r.service, r.ts): s for r, s in zip(scored.rows, scored.scores.tolist(), strict=True)}
    theirs = {(r.service, r.ts): s for r, s in zip(expected.rows, expected.scores.tolist(), strict=True)}
    assert mine[("gateway", T0 + 6)] == 1.0 > detector.threshold_
    assert {k: v for k, v in theirs.items() if k[0] != "gateway"} == {
        k: v for k, v in mine.items() if k[0] != "gateway"
    }


class _Picky:
    """A detector that cannot score any row beyond its range (finite features the model will not
    score). Everything else is the real detector."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def score_rows(self, closed: list[Any]) -> list[Any]:
        good = [i for i, (_, row) in enumerate(closed) if max(row.values) <= 1e6]
        scored = self.inner.score_rows([closed[i] for i in good])
        out: list[Any] = [None] * len(closed)
        for i, s in zip(good, scored, strict=True):
            out[i] = s
        return out


def test_rows_the_detector_refuses_are_refused_alone_and_the_rest_scored(pipeline: Any) -> None:
    stage, clean = ScoringStage(_Picky(pipeline)), ScoringStage(pipeline)
    _feed(stage, T0, 3)
    _feed(clean, T0, 3)
    expected = _feed(clean, T0 + 3, 4)
    scored = _feed(stage, T0 + 3, 4, vector_db=5e6)
    assert _keys(scored.rows + scored.refused) == _keys(expected.rows)
    assert {r.service for r in scored.refused} == {"vector-db"} and len(scored.refused) == 3
    assert all(5e6 in r.values and "could not score" in r.reason for r in scored.refused)
    assert len(scored.scores) == len(scored.rows)
    assert [r.ts for r in scored.rows] == sorted(r.ts for r in scored.rows)  # push order kept


# ------------------------------------------------------------------------------------ signing
# The diagnosis' per-service half (``engine.diagnosis.Signer``) runs where rows are scored.

WARM = [(T0 + k, 100) for k in range(0, 1000, 100)]  # past the signatures' 900 s warm-up
"""Ticks of normal points (start, seconds)."""


def _signs(scored: Scored) -> dict[tuple[str, float], tuple[bytes, bytes, bytes]]:
    return {
        (scored.rows[i].service, scored.rows[i].ts): tuple(a.tobytes() for a in sign)  # type: ignore[misc]
        for i, sign in scored.signs.items()
    }


def test_the_scoring_stage_signs_the_rows_that_stand_out(pipeline: Any) -> None:
    """A row that stands out carries its signature and kind probabilities, by its index among the
    tick's scored rows; a row the detector refused is not signed."""
    stage = ScoringStage(_Picky(pipeline), signer=Signer(shipped_model()))
    for t0, seconds in WARM:
        assert _feed(stage, t0, seconds).signs == {}  # normal rows stand out of nothing
    scored = _feed(stage, T0 + 1000, 3, vector_db=5e6, gateway=1000.0)
    assert {r.service for r in scored.refused} == {"vector-db"}
    signed = _signs(scored)
    assert {service for service, _ in signed} <= {"gateway", "vector-db"}  # a row reads its service's latest
    assert {(r.service, r.ts) for r in scored.rows if r.service == "gateway"} <= signed.keys()
    assert not {(r.service, r.ts) for r in scored.refused} & signed.keys()
    for z, recent, p in scored.signs.values():
        assert z[METRICS.index("latency_p99_ms")] >= QUIET_Z
        assert recent.shape == (len(RECENT),) and p.sum() == pytest.approx(
            1.0, abs=1e-4
        )  # leaves are rounded


class _FailingSigner:
    """A signer whose signatures fail (a model that does not fit the rows, say)."""

    def saw(self, latest: Any) -> None:
        return None

    def sign_rows(self, rows: Any) -> Any:
        raise ValueError("shapes do not fit")

    def forget(self, services: Any) -> None:
        return None


def test_a_failing_signer_costs_the_tick_its_diagnosis_only(pipeline: Any) -> None:
    errors: list[str] = []
    stage = ScoringStage(pipeline, signer=_FailingSigner(), on_error=errors.append)
    clean = ScoringStage(pipeline)
    for each in (stage, clean):
        _feed(each, T0, 3)
    errors.clear()
    scored, expected = _feed(stage, T0 + 3, 4), _feed(clean, T0 + 3, 4)
    assert scored.rows and _keys(scored.rows) == _keys(expected.rows)
    assert scored.scores.tolist() == expected.scores.tolist() and scored.signs == {}
    assert errors == ["diagnosis"]  # counted once a tick (and logged once while it repeats)


def test_scoring_workers_sign_their_services_rows_as_the_stage_in_process(pipeline: Any) -> None:
    """Each worker signs its services' rows with its own copy of the signer: the signs are those
    of one stage in the engine's process, row for row."""
    from engine.runtime.shards import ShardPool

    ticks = [_tick(t0, seconds) for t0, seconds in WARM] + [_tick(T0 + 1000, 3, gateway=1000.0)]
    here = ScoringStage(pipeline, signer=Signer(shipped_model()))
    expected = {k: v for tick in ticks for k, v in _signs(here.step([(1.0, tick)])).items()}
    got: list[Scored] = []
    pool = ShardPool(pipeline, 2, got.append, None, Signer(shipped_model()))
    try:
        for tick in ticks:
            pool.submit([(1.0, tick)])
        assert pool.wait_idle(60)
    finally:
        pool.close()
    assert {service for service, _ in expected} == {"gateway"}
    assert {k: v for scored in got for k, v in _signs(scored).items()} == expected


# ------------------------------------------------------------------------------------ events


def _row(service: str, k: int, latency: float = 100.0) -> FeatureRow:
    return FeatureRow(T0 + k, service, (latency, 0.5), T0 + k, T0 + k + 1)


def test_events_name_contributing_metrics_and_health_changes_once(pipeline: Any) -> None:
    maker = EventMaker(detector="IForest", threshold=0.9, feature_names=pipeline.feature_names,
                       bundle_version="b", detector_version="1")  # fmt: skip
    observations = Observations()
    rows = [_row("gateway", k) for k in range(5)] + [_row("gateway", 5, 900.0), _row("gateway", 6, 950.0)]
    # the first anomalous row is under the threshold: the detector's sustained alarm flagged it
    scored = Scored(rows=rows, scores=np.array([0.1] * 5 + [0.87, 0.99]), arrivals=[1.0] * 7,
                    alarms=np.array([False] * 5 + [True, True]),
                    latest={("gateway", "memory_util"): 0.5})  # fmt: skip
    observations.saw(scored, 10.0)
    made = maker.step(scored, observations)
    assert [e.score for e in made.events] == [0.87, 0.99]
    assert [e.score for e in made.changes] == [0.87]  # the flip, once
    first = made.events[0]
    assert first.contributing[0] == "latency_p99_ms" and first.features[0][0] == "latency_p99_ms__raw"
    assert first.metrics == {"memory_util": 0.5} and first.moment == T0 + 6
    back = maker.step(
        Scored(rows=[_row("gateway", 7)], scores=np.array([0.2]), alarms=np.array([False]), arrivals=[1.0]),
        observations,
    )
    assert back.events == [] and [e.anomalous for e in back.changes] == [False]
    assert observations.scores["gateway"] == (0.99, 10.0)


# ------------------------------------------------------------------------------------ policies


@pytest.fixture
def host(tmp_path: Path) -> PolicyHost:
    return PolicyHost(load_policies(write_rules(tmp_path / "rules", "http://127.0.0.1:9")), tick_seconds=1.0)


def _event(service: str, tick: int, **kw: Any) -> AnomalyEvent:
    data: dict[str, Any] = dict(service=service, detector="IForest", detector_version="1", bundle_version="b",
                                score=0.99, threshold=0.9, window_start=T0 + tick - 1, window_end=T0 + tick,
                                ts=T0 + tick - 1, id=f"evt-{service}-{tick}")  # fmt: skip
    return AnomalyEvent(**{**data, **kw})


def test_the_policy_stage_marks_every_root_before_posting_a_victim(host: PolicyHost) -> None:
    """gateway depends on vector-db: with both anomalous in one tick, only the root is acted on,
    whatever order the rows came in; a root normal again by the tick's end leaves its victim ungated."""
    victim, root = _event("gateway", 1), _event("vector-db", 1)
    tick = ask(host, TickEvents(changes=[victim, root], events=[victim, root], emitted=0.0))
    assert [d.target for d in tick.decided] == ["vector-db"]
    healthy = _event("vector-db", 2, anomalous=False, score=0.1)
    ask(host, TickEvents(changes=[healthy], events=[], emitted=0.0))
    assert not host.health()["vector-db"].anomalous


def test_a_failing_event_costs_only_itself(tmp_path: Path) -> None:
    """A rule whose action breaks on one event; the tick's other events still decide."""
    rules = write_rules(tmp_path / "rules", "http://127.0.0.1:9")
    policy = rules / "platform.yaml"
    policy.write_text(
        policy.read_text().replace("params: {delta: 1}", "params: {delta: '${metrics.queue_depth}'}")
    )
    host = PolicyHost(load_policies(rules), tick_seconds=1.0)
    events = [
        _event("vector-db", 1),
        _event("feature-store", 1),
        _event("inference-a", 2),
        _event("inference-a", 3),
    ]
    tick = ask(host, TickEvents(changes=[], events=events, emitted=0.0))
    assert [d.target for d in tick.decided] == ["vector-db", "inference-a"]
    ((kind, data),) = tick.notes
    assert (
        kind == "policy_error"
        and data["event_id"] == "evt-feature-store-1"
        and "queue_depth" in data["error"]
    )


# ------------------------------------------------------------------------------------ decider


def _decider(journal: Journal, **limits: Any) -> Decider:
    return Decider(journal, limits=safeguards.GlobalLimits(**limits), replicas=lambda t: 2)


def test_decisions_of_one_batch_see_each_others_executions(host: PolicyHost, tmp_path: Path) -> None:
    """The safeguard counts are read once per batch: the first decision's execution must still take
    the only slot (max_concurrent 1) from the second decision of the same batch."""
    with Journal(tmp_path / "j.sqlite") as journal:
        decider = _decider(journal, max_concurrent=1)
        ticks = [
            ask(host, TickEvents([], [_event("inference-a", 1)], 0.0)),
            ask(host, TickEvents([], [_event("inference-a", 2), _event("feature-store", 2)], 0.0)),
        ]
        done = decider.commit(ticks)
        assert [e.decision.target for e in done.executions] == ["inference-a"]
        assert sorted(d["status"] for d in journal.recent("decisions")) == ["blocked", "executing"]
        assert journal.recent("decisions", status="blocked")[0]["reason"].startswith("max_concurrent")
        assert [k for k, _ in done.notes] == ["blocked"]
        again = decider.commit([ask(host, TickEvents([], [_event("feature-store", 3)], 0.0))])
        assert again.executions == [] and journal.count("decisions", "blocked") == 2
        assert journal.count("events") == 4


def _two_faults_one_slot(host: PolicyHost, journal: Journal, **limits: Any) -> tuple[Decider, Committed]:
    """inference-a decided first and executing; feature-store decided in the same batch, blocked."""
    decider = _decider(journal, max_concurrent=1, **limits)
    ticks = [
        ask(host, TickEvents([], [_event("inference-a", 1)], 0.0)),
        ask(host, TickEvents([], [_event("inference-a", 2), _event("feature-store", 2)], 0.0)),
    ]
    return decider, decider.commit(ticks)


def test_a_decision_blocked_for_a_slot_runs_when_the_slot_frees(host: PolicyHost, tmp_path: Path) -> None:
    """Two faults at once, one slot (max_concurrent 1): the second decision is journaled as blocked
    and tried again, as a new decision naming it, once the first action settles; the policies spent
    its evidence when they decided, so dropping it left the second fault unremedied."""
    with Journal(tmp_path / "j.sqlite") as journal:
        decider, first = _two_faults_one_slot(host, journal)
        assert [e.decision.target for e in first.executions] == ["inference-a"]
        (blocked,) = journal.recent("decisions", status="blocked")
        assert blocked["target"] == "feature-store" and blocked["reason"].endswith("waits for a free slot")
        assert [d.id for d in decider.waiting] == [blocked["id"]]
        still = decider.commit([])
        assert still.executions == [] and len(decider.waiting) == 1  # the slot is still taken
        freed = decider.commit([], [lambda j: j.settle_execution(first.executions[0].id)])
        (retry,) = freed.executions
        assert retry.decision.target == "feature-store" and retry.decision.id != blocked["id"]
        assert retry.decision.event_id == blocked["event_id"] and decider.waiting == []
        assert journal.decision(retry.decision.id)["reason"] == f"retry of {blocked['id']}"  # type: ignore[index]
        assert journal.decision(blocked["id"])["reason"].endswith(f"retried as {retry.decision.id}")  # type: ignore[index]
        assert ("retried", {"decision_id": blocked["id"], "retry_id": retry.decision.id}) in freed.notes


def test_a_decision_waits_for_a_slot_no_longer_than_its_ttl(host: PolicyHost, tmp_path: Path) -> None:
    """The wait is bounded by the decision's approval TTL: then it is given up, and journaled so."""
    with Journal(tmp_path / "j.sqlite") as journal:
        decider = _decider(journal, max_concurrent=1)
        (running,) = ask(host, TickEvents([], [_event("vector-db", 1)], 0.0)).decided
        (late,) = ask(host, TickEvents([], [_event("feature-store", 1)], 0.0)).decided
        late = replace(late, approval=replace(late.approval, ttl_s=1e-6))
        running = replace(running, approval=replace(running.approval, required=False))
        decider.commit([Tick([], [], 0.0, [running], [])])
        decider.commit([Tick([], [], 0.0, [late], [])])
        (blocked,) = journal.recent("decisions", status="blocked")
        gave_up = decider.commit([])
        assert gave_up.executions == [] and decider.waiting == []
        assert ("wait_expired", {"decision_id": blocked["id"]}) in gave_up.notes
        assert journal.decision(blocked["id"])["reason"].endswith("gave up waiting")  # type: ignore[index]


def test_one_remedy_per_incident_and_approvals_wait(host: PolicyHost, tmp_path: Path) -> None:
    decided = ask(host, TickEvents([], [_event("vector-db", 1), _event("vector-db", 2)], 0.0)).decided
    assert len(decided) == 2 and all(d.approval.required for d in decided)
    with Journal(tmp_path / "j.sqlite") as journal:
        ctx = _decider(journal).context(decided)
        out = enact([(d, None) for d in decided], ctx)
    assert [status for _, status, _ in out.records] == [DecisionStatus.AWAITING_APPROVAL]
    assert out.approvals == decided[:1] and out.starts == []
    assert [kind for kind, _ in out.notes] == ["duplicate"]


def test_an_event_the_journal_refuses_costs_only_itself(host: PolicyHost, tmp_path: Path) -> None:
    """Issue 18, item 1: a service name with a lone surrogate made the decider's whole batch fail,
    losing the events and decisions of normally named services in it."""
    bad = _event("\ud800-x", 1)
    good = _event("feature-store", 1)
    tick = ask(host, TickEvents(changes=[bad, good], events=[bad, good], emitted=0.0))
    with Journal(tmp_path / "j.sqlite") as journal:
        done = _decider(journal).commit([tick])
        assert [e.decision.target for e in done.executions] == ["feature-store"]
        services = {r["service"] for r in journal.recent("events")}
        assert services == {"feature-store"} and journal.count("events") == 2  # its anomaly and health change
        assert [d["target"] for d in journal.recent("decisions")] == ["feature-store"]
        refused = [data for kind, data in done.notes if kind == "journal_refused"]
        assert {d["event_id"] for d in refused} == {bad.id}


# ------------------------------------------------------------------------------------ supervisor


def _journal_decision(journal: Journal, decider: Decider, host: PolicyHost, service: str) -> Decision:
    (decision,) = ask(host, TickEvents([], [_event(service, 1)], 0.0)).decided
    journal.record_decision(decision.to_record(), status=DecisionStatus.AWAITING_APPROVAL)
    journal.create_approval(decision.id, ttl_s=60.0, now=1000.0)
    return decision


def test_the_supervisor_expires_approvals_and_runs_approved_ones(host: PolicyHost, tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        decider = _decider(journal)
        supervisor = Supervisor(journal, decider, Observations(), threshold=0.9)
        expired = _journal_decision(journal, decider, host, "vector-db")
        assert supervisor.step(now=1059.0).notes == [] and supervisor.pending_approvals == 1
        done = supervisor.step(now=1061.0)
        assert [k for k, _ in done.notes] == ["approval_expired"] and done.executions == []
        assert journal.decision(expired.id)["status"] == DecisionStatus.DENIED  # type: ignore[index]
        host2 = PolicyHost(host.compiled, tick_seconds=1.0)
        approved = _journal_decision(journal, decider, host2, "vector-db")
        approval = journal.approval_for(approved.id)
        assert approval is not None
        row, note = supervisor.settle_approval(
            approval["id"], approve=True, approver="alice", reason="ok", now=1001.0
        )
        assert row["approver"] == "alice" and note[0] == "approval_approved"
        started = supervisor.step(now=1002.0)
        assert [(e.decision.id, e.kind) for e in started.executions] == [(approved.id, "action")]
        assert journal.decision(approved.id)["status"] == DecisionStatus.EXECUTING  # type: ignore[index]


def test_a_verification_holds_only_on_observations_after_the_action(host: PolicyHost, tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        decider = _decider(journal)
        observations = Observations()
        supervisor = Supervisor(journal, decider, observations, threshold=0.9)
        (decision,) = ask(
            host, TickEvents([], [_event("inference-a", 1), _event("inference-a", 2)], 0.0)
        ).decided
        (execution,) = decider.commit([Tick_of(decision)]).executions
        outcome = Outcome(execution, {"ok": True}, None, returned=100.0)
        decider.commit([], [Executor.record([outcome])])
        observations.scores["inference-a"] = (0.5, 99.0)  # seen before the action returned
        assert supervisor.step(now=101.0).verdicts == []
        observations.scores["inference-a"] = (0.5, 101.0)
        (verdict,) = supervisor.step(now=102.0).verdicts
        assert verdict.verified and verdict.state.detail == {"score": 0.5}
        assert supervisor.step(now=103.0).verdicts == []  # handed over once, until it is journaled
        decider.commit([], [Supervisor.record([verdict])])
        assert journal.decision(decision.id)["status"] == DecisionStatus.VERIFIED  # type: ignore[index]


# ------------------------------------------------------------------------------------ the writer


def test_a_commit_dispatches_its_actions_before_any_listener_hears_of_it(
    tmp_path: Path, pipeline: Any
) -> None:
    """A listener is never on the path to an actuator: a commit's actions are dispatched first,
    then listeners hear its notes (they were told first, so a slow listener held every action of
    the commit back). Here the listener of the commit's approval request waits for the restart
    decided in the same commit to reach the target."""
    with AdminServer() as admin:
        components = assemble(pipeline, write_rules(tmp_path / "rules", admin.url), bundle_version="b")
        events = [_event("inference-a", 1), _event("inference-a", 2)]
        restart = ask(components.policies, TickEvents([], events, 0.0))
        approval = ask(components.policies, TickEvents([], [_event("vector-db", 3)], 0.0))
        heard: list[bool] = []

        def listener(kind: str, data: dict[str, Any]) -> None:
            if kind == "approval_requested":
                deadline = time.monotonic() + 10.0
                while not admin.calls("/admin/restart") and time.monotonic() < deadline:
                    time.sleep(0.02)
                heard.append(bool(admin.calls("/admin/restart")))

        with Journal(tmp_path / "j.sqlite") as journal:
            settings = load_settings(overrides={}, environ={})
            writer = Writer(
                journal, components, settings, Observations(),
                notify=listener, latency=lambda name, s: None, on_error=lambda stage: None,
            )  # fmt: skip
            writer.start()
            try:
                writer.submit(Tick([], [], 0.0, restart.decided + approval.decided, []))
                assert wait_for(lambda: heard, timeout=20.0) == [True]
            finally:
                assert writer.stop(20.0)


def test_the_writer_times_each_wait_from_decision_to_dispatch(tmp_path: Path, pipeline: Any) -> None:
    """The benchmark splits anomaly -> dispatch into the stages it reports: the time until the
    policies are asked and their own, the decided tick's wait for the writer thread, the commit,
    and each execution's wait for an actuator thread; each is part of the whole, measured for every
    decided tick and every dispatched execution."""
    with AdminServer() as admin:
        components = assemble(pipeline, write_rules(tmp_path / "rules", admin.url), bundle_version="b")
        components.policies.post(_event("inference-a", 1))  # the rule's persistence: the next decides
        emitted = time.perf_counter()
        tick = ask(components.policies, TickEvents([], [_event("inference-a", 2)], emitted))
        assert tick.decided and emitted < tick.asked
        told: dict[str, list[float]] = {}
        with Journal(tmp_path / "j.sqlite") as journal:
            writer = Writer(
                journal, components, load_settings(overrides={}, environ={}), Observations(),
                notify=lambda kind, data: None, on_error=lambda stage: None,
                latency=lambda name, s: told.setdefault(name, []).append(s),
            )  # fmt: skip
            writer.start()
            try:
                writer.submit(tick)
                wait_for(lambda: told.get("event_to_dispatch"), timeout=20.0)
            finally:
                assert writer.stop(20.0)
    assert set(told) == {"event_to_decided", "event_to_policies", "policies", "writer_wait", "commit",
                         "decided_commit", "event_to_journaled", "actuator_wait",
                         "event_to_dispatch"}  # fmt: skip
    assert all(len(told[name]) == 1 for name in told if name != "commit")  # then the outcome's
    assert all(s >= 0 for samples in told.values() for s in samples)
    assert told["decided_commit"][0] in told["commit"]  # the outcome's commit decided nothing
    assert told["event_to_policies"][0] + told["policies"][0] == pytest.approx(told["event_to_decided"][0])
    journaled, dispatched = told["event_to_journaled"][0], told["event_to_dispatch"][0]
    assert told["event_to_decided"][0] + told["writer_wait"][0] + told["commit"][0] <= journaled
    assert journaled + told["actuator_wait"][0] <= dispatched


def Tick_of(decision: Decision) -> Any:
    return Tick([], [], 0.0, [decision], [])


# ------------------------------------------------------------------------------------ recovery


def _started(journal: Journal, decision: Decision, key_kind: str = "action") -> str:
    journal.record_decision(decision.to_record(), status=DecisionStatus.EXECUTING)
    eid = journal.start_execution(
        decision.to_record(), kind=key_kind, action=decision.action, params=decision.params,
        idempotency_key=f"{decision.id}:{key_kind}",
    )  # fmt: skip
    assert eid is not None
    return eid


@pytest.mark.parametrize("dedup", [True, False])
def test_a_call_left_unanswered_by_a_crash_is_asked_again_or_escalated(
    host: PolicyHost, tmp_path: Path, pipeline: Any, dedup: bool
) -> None:
    """Issue 18: executions a crash left 'started' are reconciled, not left unknown: a target that
    deduplicates by idempotency key is asked again (it applies the call at most once); any other
    is reported unknown, never repeated, and escalated to a human."""
    with AdminServer() as admin:
        rules = write_rules(tmp_path / "rules", admin.url)
        targets = rules / "targets.yaml"
        if dedup:
            targets.write_text(targets.read_text().replace("timeout_s: 30", "timeout_s: 30, dedup: true"))
        components = assemble(pipeline, rules, bundle_version="b")
        (decision,) = ask(
            components.policies, TickEvents([], [_event("inference-a", 1), _event("inference-a", 2)], 0.0)
        ).decided
        outcomes: list[Outcome] = []
        with Journal(tmp_path / "j.sqlite") as journal:
            eid = _started(journal, decision)
            decider = _decider(journal)
            executor = Executor(
                journal, components.actions, timeout_s=5.0, threads=2, on_outcome=outcomes.append
            )
            done = recover(
                journal, decider, executor, components.policies, stale_decision_s=600, replay_horizon_s=0
            )
            if dedup:
                assert done.counts["reconciled"] == 1 and done.counts["unknown"] == 0
                (again,) = done.executions
                assert (again.id, again.idempotency_key) == (eid, f"{decision.id}:action")
                outcome = executor.call(again)
                assert outcome.error is None
                decider.commit([], [Executor.record([outcome])])
                assert journal.execution(eid)["status"] == ExecutionStatus.SUCCEEDED  # type: ignore[index]
                assert journal.decision(decision.id)["status"] == DecisionStatus.VERIFYING  # type: ignore[index]
                assert [c["key"] for c in admin.calls("/admin/restart")] == [f"{decision.id}:action"]
            else:
                assert done.counts["unknown"] == 1 and done.executions == []
                assert journal.execution(eid)["status"] == ExecutionStatus.UNKNOWN  # type: ignore[index]
                assert journal.decision(decision.id)["status"] == DecisionStatus.UNKNOWN  # type: ignore[index]
                hook = wait_for(lambda: admin.calls("/hook"))
                assert "outcome is unknown" in hook[0]["body"]["reason"]
                assert admin.calls("/admin/restart") == []  # never repeated
            executor.shutdown()


def test_an_escalation_left_unsent_by_a_crash_is_sent_again_not_left_unknown(
    host: PolicyHost, tmp_path: Path, pipeline: Any
) -> None:
    """Issue 18: a crash between journaling an escalation and its webhook's answer left it
    'unknown' and told nobody (an escalation is not escalated), so the human it was for never
    heard of the unknown or failed action. A notification is sent again with the same idempotency
    key: a receiver may get it twice (and can drop the repeat by key), never zero times."""
    with AdminServer() as admin:
        components = assemble(pipeline, write_rules(tmp_path / "rules", admin.url), bundle_version="b")
        (decision,) = ask(
            components.policies, TickEvents([], [_event("inference-a", 1), _event("inference-a", 2)], 0.0)
        ).decided
        outcomes: list[Outcome] = []
        with Journal(tmp_path / "j.sqlite") as journal:
            journal.record_decision(decision.to_record(), status=DecisionStatus.UNKNOWN)
            payload = {"decision_id": decision.id, "reason": "its outcome is unknown"}
            eid = journal.start_execution(
                decision.to_record(), kind="escalation", action="webhook",
                params={"url": f"{admin.url}/hook", "payload": payload},
                idempotency_key=f"{decision.id}:escalation",
            )  # fmt: skip
            executor = Executor(
                journal, components.actions, timeout_s=5.0, threads=2, on_outcome=outcomes.append
            )
            done = recover(
                journal, _decider(journal), executor, components.policies,
                stale_decision_s=600, replay_horizon_s=0,
            )  # fmt: skip
            assert done.counts["unknown"] == 0 and done.counts["reconciled"] == 1
            (again,) = done.executions
            assert (again.id, again.kind) == (eid, "escalation")
            outcome = executor.call(again)
            assert outcome.error is None
            _decider(journal).commit([], [Executor.record([outcome])])
            assert journal.execution(eid)["status"] == ExecutionStatus.SUCCEEDED  # type: ignore[index]
            (hook,) = admin.calls("/hook")
            assert hook["key"] == f"{decision.id}:escalation" and hook["body"]["decision_id"] == decision.id
            executor.shutdown()


def test_registry_actions_say_which_targets_can_be_asked_again(tmp_path: Path) -> None:
    from engine.actions import TargetsConfig
    from engine.records import ActionCall

    targets = TargetsConfig.model_validate(
        {"services": {"a": {"backend": "http", "http": {"url": "http://x", "dedup": True}},
                      "b": {"backend": "http", "http": {"url": "http://x"}},
                      "c": {"backend": "simulator"}}}
    )  # fmt: skip
    actions = RegistryActions(targets)
    restart = ActionCall("restart")
    assert [actions.repeatable(restart, target=t) for t in "abc"] == [True, False, True]
    assert not actions.repeatable(ActionCall("webhook", {"url": "http://x"}), target="a")


def test_a_decision_round_trips_through_its_journal_row(host: PolicyHost, tmp_path: Path) -> None:
    (decision,) = ask(host, TickEvents([], [_event("feature-store", 1)], 0.0)).decided
    assert decision.verify is not None
    decision = replace(  # every spec with something in it
        decision,
        verify=replace(decision.verify, metrics={"error_rate": (None, 0.05)}),
        inverse=ActionCall("scale", {"delta": -1}),
        diagnosis=Diagnosis(
            kind="memory_leak", probability=0.9, root="feature-store", evidence=(("memory_util", 6.5),)
        ),
    )
    assert Decision.from_record(decision.to_record()) == decision
    with Journal(tmp_path / "j.sqlite") as journal:  # and through its JSON columns
        journal.record_decisions([(decision.to_record(), DecisionStatus.EXECUTING, None)])
        row = journal.decision(decision.id)
        assert row is not None and Decision.from_record(row) == decision
    assert Execution("x", decision, "rollback", decision.inverse).idempotency_key == f"{decision.id}:rollback"
