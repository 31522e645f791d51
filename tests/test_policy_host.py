"""The durable-rules host wrapper, against a real durable-rules Host: the DESIGN.md traps and more."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO

from engine.errors import PolicyError
from engine.policy import PolicyHost, PolicyRunError, compile_policies, load_policies
from engine.records import AnomalyEvent

POLICY = """
policy: test-host
rules:
  - name: restart-on-memory
    when:
      services: [inference-a, inference-b, vector-db]
      score: {min: 0.7}
      metrics: {memory_util: {min: 0.8}}
    then: {action: restart}
    verify: {steady_state: {score_below: 0.5}, deadline: 10m}
  - name: scale-persistent
    when:
      services: [gateway]
      persistence: {count: 3, of: 5}
    then: {action: scale, params: {delta: 1}}
    verify: {steady_state: {score_below: 0.5}, deadline: 10m}
  - name: restart-after-5m
    when:
      services: [feature-store]
      persistence: {for: 5m}
    then: {action: restart}
    verify: {steady_state: {score_below: 0.5}, deadline: 10m}
  - name: refresh-with-template
    when:
      services: [ingestion]
    then:
      action: webhook
      params: {url: "http://127.0.0.1:9/hook", payload: {depth: "${metrics.queue_depth}"}}
    verify: {steady_state: {score_below: 0.5}, deadline: 10m}
"""


@pytest.fixture
def policy_set(tmp_path: Path):  # type: ignore[no-untyped-def]
    shutil.copy(REPO / "rules" / "topology.yaml", tmp_path / "topology.yaml")
    (tmp_path / "p.yaml").write_text(POLICY)
    return load_policies(tmp_path)


def mem_event(service: str = "inference-a", tick: int = 1, **kw: object) -> AnomalyEvent:
    data: dict = {
        "service": service,
        "detector": "iforest",
        "score": 0.9,
        "ts": 1_790_000_000 + 60 * tick,
        "tick": tick,
        "metrics": {"memory_util": 0.95},
    }
    data.update(kw)
    return AnomalyEvent.model_validate(data)


def test_matching_event_gives_a_rendered_decision(policy_set) -> None:  # type: ignore[no-untyped-def]
    host = PolicyHost(policy_set)
    event = mem_event()
    decision = host.post(event)
    assert decision is not None
    assert (decision.rule, decision.action, decision.target, decision.params) == (
        "test-host/restart-on-memory",
        "restart",
        "inference-a",
        {},
    )
    assert decision.policy_version.endswith("+" + policy_set.fingerprint[:12])
    assert (decision.event_id, decision.service, decision.window_end) == (event.id, "inference-a", None)
    assert decision.verify is not None and decision.verify.deadline_s > 0


def test_identical_payloads_are_both_processed(policy_set) -> None:  # type: ignore[no-untyped-def]
    """Trap: durable-rules drops messages it has already observed; every post gets a fresh id."""
    host = PolicyHost(policy_set)
    payload = {
        "service": "inference-a",
        "detector": "iforest",
        "score": 0.9,
        "ts": 1_790_000_000.0,
        "metrics": {"memory_util": 0.95},
    }
    first, second = host.post(payload), host.post(payload)
    assert first is not None and second is not None
    assert first.event_id != second.event_id and first.id != second.id
    same = mem_event(tick=7)  # the very same event object (same id) posted again, e.g. a replay
    assert host.post(same) is not None and host.post(same) is not None


def test_unmatched_events_are_no_match_not_errors(policy_set) -> None:  # type: ignore[no-untyped-def]
    """Trap: an event no rule covers raises MessageNotHandledException inside durable-rules."""
    host = PolicyHost(policy_set)
    assert host.post(mem_event(service="not-in-topology")) is None
    assert host.post(mem_event(score=0.1)) is None  # covered service, filters fail: the sink consumes it
    assert host.stats.unmatched == 2 and host.stats.errors == 0
    assert host.post(mem_event()) is not None  # and the host still works


def test_action_errors_surface_as_policy_error(policy_set) -> None:  # type: ignore[no-untyped-def]
    """Trap: an action that raises does not raise from post(); the error lands in the state as a string."""
    host = PolicyHost(policy_set)
    with pytest.raises(PolicyError, match=r"template \$\{metrics.queue_depth\} has no value") as info:
        host.post(mem_event(service="ingestion", metrics={}))
    assert info.value.__cause__ is not None
    assert host.stats.errors == 1
    ok = host.post(mem_event(service="ingestion", metrics={"queue_depth": 7}))
    assert ok is not None and ok.params["payload"] == {"depth": 7.0}


def test_text_that_is_not_utf8_is_refused_before_durable_rules(policy_set) -> None:  # type: ignore[no-untyped-def]
    """Issue 18: a lone surrogate in a service name reached durable-rules' C parser, which failed
    (and can crash the process); the host refuses the event and keeps working."""
    host = PolicyHost(policy_set)
    with pytest.raises(PolicyError, match="not valid UTF-8"):
        host.post(mem_event(service="\ud800-x"))
    with pytest.raises(PolicyError, match="not valid UTF-8"):
        host.post(mem_event(metrics={"\udcff": 1.0}))
    assert host.post(mem_event()) is not None


def test_dependency_gating_and_no_late_firing(policy_set) -> None:  # type: ignore[no-untyped-def]
    """A victim's event is consumed, not parked: lifting the gate later must not act on it."""
    host = PolicyHost(policy_set)
    host.set_health("vector-db", anomalous=True)
    assert host.post(mem_event(service="inference-a")) is None
    host.set_health("vector-db", anomalous=False)
    assert host.stats.decided == 0
    assert host.post(mem_event(service="inference-a", tick=2)) is not None


def test_a_single_failing_post_carries_no_decision(policy_set) -> None:  # type: ignore[no-untyped-def]
    host = PolicyHost(policy_set)
    with pytest.raises(PolicyRunError) as info:
        host.post(mem_event(service="ingestion", metrics={}))
    assert info.value.decisions == [] and info.value.errors == [info.value]


def test_maintenance_flag_vetoes(policy_set) -> None:  # type: ignore[no-untyped-def]
    host = PolicyHost(policy_set)
    host.set_health("inference-b", anomalous=False, maintenance=True)
    assert host.post(mem_event(service="inference-b")) is None
    host.set_health("inference-b", anomalous=False, maintenance=False)
    assert host.post(mem_event(service="inference-b", tick=2)) is not None


def test_persistence_n_of_m_counts_in_durable_rules(policy_set) -> None:  # type: ignore[no-untyped-def]
    host = PolicyHost(policy_set)
    gw = lambda tick: mem_event(service="gateway", tick=tick)  # noqa: E731
    assert host.post(gw(1)) is None
    assert host.post(gw(4)) is None
    decision = host.post(gw(5))  # ticks 1, 4, 5: three in the last five
    assert decision is not None and decision.action == "scale" and len(decision.evidence) == 2
    assert host.post(gw(6)) is None  # a decision re-arms the count
    assert (
        host.post(gw(20)) is None and host.post(gw(30)) is None and host.post(gw(36)) is None
    )  # too spread out


def test_n_of_m_counts_across_healthy_ticks_a_streak_does_not(policy_set) -> None:  # type: ignore[no-untyped-def]
    host = PolicyHost(policy_set)
    gw = lambda tick: mem_event(service="gateway", tick=tick)  # noqa: E731
    assert host.post(gw(1)) is None
    host.set_health("gateway", anomalous=False)  # a weak fault flickers at the threshold
    assert host.post(gw(3)) is None
    host.set_health("gateway", anomalous=False)
    decision = host.post(gw(5))  # ticks 1, 3, 5: three of the last five, healthy ticks between
    assert decision is not None and decision.action == "scale"
    fs = lambda tick: mem_event(service="feature-store", tick=tick)  # noqa: E731
    assert host.post(fs(0)) is None
    host.set_health("feature-store", anomalous=False)
    assert host.post(fs(3)) is None and host.post(fs(6)) is None  # the streak began at 3, not 0
    assert host.post(fs(8)) is not None


def test_persistence_for_a_duration(policy_set) -> None:  # type: ignore[no-untyped-def]
    host = PolicyHost(policy_set)
    fs = lambda tick: mem_event(service="feature-store", tick=tick)  # noqa: E731
    assert host.post(fs(0)) is None
    assert host.post(fs(3)) is None
    assert host.post(fs(6)) is not None  # anomalous since tick 0: 6 minutes >= 5
    assert host.post(fs(7)) is None
    host.set_health("feature-store", anomalous=False)  # the streak ends
    assert host.post(fs(14)) is None


def test_facts_stay_bounded(policy_set) -> None:  # type: ignore[no-untyped-def]
    host = PolicyHost(policy_set)
    for tick in range(0, 3000, 3):  # never 3 of 5: history must still not grow
        host.post(mem_event(service="gateway", tick=tick))
        host.post(mem_event(service="feature-store", tick=tick, ts=1_790_000_000 + tick))
    facts = host.facts()
    history = [f for f in facts if f["t"] == "anomaly_history"]
    health = [f for f in facts if f["t"] == "health"]
    assert len(history) <= 5 + 5 + 1, len(history)
    assert len(health) <= 2  # one per service at most (only facts some rule can match are stored)


def test_compiled_ruleset_is_json_with_an_index(policy_set) -> None:  # type: ignore[no-untyped-def]
    compiled = compile_policies(policy_set)
    text = compiled.to_json()
    first, second = PolicyHost(compiled), PolicyHost(compiled)  # durable-rules mutates what it registers
    assert compiled.to_json() == text
    assert first.post(mem_event()) is not None and second.post(mem_event()) is not None
    assert '"sink"' in text and "anomaly_history" in text
    assert set(compiled.index.values()) >= {("test-host/restart-on-memory", "vector-db")}
    assert compiled.history_ticks == 5 and compiled.keeps_anchor


WINDOWS = """
policy: windows
rules:
  - name: r
    when: {services: [inference-a]}
    unless:
      maintenance_windows:
        - {days: [sat], start: "23:00", end: "01:00"}
        - {from: "2026-12-24T00:00:00", until: "2026-12-26T00:00:00"}
    then: {action: scale, params: {replicas: "${topology.replicas}"}}
    safeguards: {blast_radius: 0.25}
    verify: {steady_state: {score_below: 0.5}, deadline: 10m}
"""


@pytest.mark.parametrize(
    ("moment", "acts"),
    [
        ("2026-11-28T23:30:00", False),  # Saturday night, inside the window
        ("2026-11-28T22:59:00", True),
        ("2026-11-29T00:30:00", False),  # past midnight, still the Saturday window's tail
        ("2026-11-29T01:00:00", True),
        ("2026-12-25T12:00:00", False),  # fixed window
        ("2026-12-26T00:00:00", True),
    ],
)
def test_maintenance_windows(tmp_path: Path, moment: str, acts: bool) -> None:
    from datetime import UTC, datetime

    shutil.copy(REPO / "rules" / "topology.yaml", tmp_path / "topology.yaml")
    (tmp_path / "p.yaml").write_text(WINDOWS)
    host = PolicyHost(load_policies(tmp_path))
    ts = datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp()
    decision = host.post(mem_event(ts=ts))
    assert (decision is not None) == acts
    if decision is not None:
        assert decision.params == {"replicas": 4, "delta": None}  # typed from ${topology.replicas}


def test_constant_params_stay_each_rules_own_and_each_decisions_own(tmp_path: Path) -> None:
    """Constant params are validated once per rule (issue 13): two rules of one action keep their
    own values, a target without a template is kept as written, and a decision's params are its
    own copy (changing them changes no later decision)."""
    shutil.copy(REPO / "rules" / "topology.yaml", tmp_path / "topology.yaml")
    rules = "".join(
        f"""
  - name: scale-{s}
    when: {{services: [inference-{s}]}}
    then: {{action: scale, target: {target}, params: {{delta: {delta}}}}}
    verify: {{steady_state: {{score_below: 0.5}}, deadline: 10m}}"""
        for s, target, delta in (("a", "vector-db", 1), ("b", "feature-store", 2))
    )
    (tmp_path / "p.yaml").write_text(f"policy: consts\nrules:{rules}\n")
    host = PolicyHost(load_policies(tmp_path))
    decided = [host.post(mem_event(service=f"inference-{s}", tick=t)) for t, s in enumerate("abab")]
    assert [(d.target, d.params["delta"]) for d in decided if d] == [
        ("vector-db", 1),
        ("feature-store", 2),
        ("vector-db", 1),
        ("feature-store", 2),
    ]
    for decision in decided:
        assert decision is not None
        decision.params["delta"] = 99
    again = host.post(mem_event(service="inference-a", tick=9))
    assert again is not None and again.params["delta"] == 1


def test_a_topology_larger_than_one_ruleset_holds_is_sharded(tmp_path: Path) -> None:
    """durable-rules 2.0.28 loops for ever registering a ruleset in which one test has more than
    512 successors, which one rule over 513 services made (an engine over such a topology hung at
    start). The services are sharded, a ruleset each; gating and persistence work across shards."""
    from engine.policy.compiler import NODE_CHILDREN, SHARD_SERVICES

    n = 1200  # services 0-599 each depend on one of 600-1199
    lines = [f"  svc-{i:04d}: {{depends_on: [svc-{i + 600:04d}]}}" for i in range(600)]
    lines += [f"  svc-{i:04d}: {{}}" for i in range(600, n)]
    (tmp_path / "topology.yaml").write_text("services:\n" + "\n".join(lines) + "\n")
    (tmp_path / "p.yaml").write_text(
        "policy: many\nrules:\n  - name: restart-any\n    when:\n      services: ['svc-*']\n"
        "      persistence: {count: 2, of: 3}\n    then: {action: restart}\n"
        "    verify: {steady_state: {score_below: 0.5}, deadline: 10m}\n"
    )
    compiled = compile_policies(load_policies(tmp_path))
    # checked before registering anything: a broken cut would hang below instead of failing
    assert len(compiled.rulesets) > 1
    for rules in compiled.rulesets:
        services = {compiled.index[name][1] for name in rules if name != "sink"}
        assert 0 < len(services) <= SHARD_SERVICES < NODE_CHILDREN
    assert sorted(compiled.shard_of) == [f"svc-{i:04d}" for i in range(n)]
    assert compiled.shard_of["svc-0000"] != compiled.shard_of["svc-0600"]
    assert '"rulesets"' in compiled.to_json()

    host = PolicyHost(compiled)

    def event(service: str, tick: int) -> AnomalyEvent:
        return mem_event(service=service, tick=tick, ts=1_790_000_000 + 60 * tick)

    host.set_health("svc-0600", anomalous=True)  # its dependent's rules live in another ruleset
    assert host.post(event("svc-0000", 1)) is None
    assert host.post(event("svc-0000", 2)) is None  # 2 of 3, but gated by its upstream
    host.set_health("svc-0600", anomalous=False)
    decision = host.post(event("svc-0000", 3))
    assert decision is not None and decision.target == "svc-0000"
    for service in ("svc-0599", "svc-1199"):  # the first and the last shard's services
        assert host.post(event(service, 1)) is None
        last = host.post(event(service, 2))
        assert last is not None and last.service == service
    assert host.stats.errors == 0
    # facts some rule can match are kept: the anomalous upstream, in its dependent's ruleset
    assert {f["service"] for f in host.facts() if f["t"] == "health"} == {"svc-1199"}


def test_one_policy_set_over_few_services_compiles_to_one_ruleset_as_before(policy_set) -> None:  # type: ignore[no-untyped-def]
    """Bundles keep their bytes: a single ruleset is written as ``ruleset``, not a list."""
    compiled = compile_policies(policy_set)
    assert len(compiled.rulesets) == 1
    text = compiled.to_json()
    assert '"ruleset"' in text and '"rulesets"' not in text


def test_gating_on_more_upstreams_than_one_test_holds_is_refused_with_the_fix(tmp_path: Path) -> None:
    n = 600  # more than the 511 one rule's gating test can name
    ups = [f"u-{i:03d}" for i in range(n)]
    lines = [f"  {u}: {{}}" for u in ups] + [f"  top: {{depends_on: [{', '.join(ups)}]}}"]
    (tmp_path / "topology.yaml").write_text("services:\n" + "\n".join(lines) + "\n")
    (tmp_path / "p.yaml").write_text(
        "policy: wide\nrules:\n  - name: restart-top\n    when: {services: [top]}\n"
        "    then: {action: restart}\n    verify: {steady_state: {score_below: 0.5}, deadline: 10m}\n"
    )
    with pytest.raises(PolicyError, match=f"gates top on {n} upstream") as info:
        compile_policies(load_policies(tmp_path))
    assert "upstream_anomalous: false" in (info.value.hint or "")


def test_more_rules_on_one_service_than_the_rules_engine_survives_are_refused(tmp_path: Path) -> None:
    """An event that 65 rules match fails in durable-rules (error 303), and so does every later
    event of its ruleset: such a policy set is refused at load instead; 64 rules still decide."""

    def policies(n: int) -> Path:
        folder = tmp_path / str(n)
        folder.mkdir()
        (folder / "topology.yaml").write_text("services:\n  a: {}\n")
        rules = "".join(
            f"  - name: r{i}\n    when: {{services: [a], score: {{min: {0.5 + i / 1000}}}}}\n"
            "    then: {action: restart}\n    verify: {steady_state: {score_below: 0.5}, deadline: 10m}\n"
            for i in range(n)
        )
        (folder / "p.yaml").write_text("policy: many\nrules:\n" + rules)
        return folder

    host = PolicyHost(load_policies(policies(64)))
    for tick in (1, 2):  # every rule matches: one decides, and the next event still works
        assert host.post(mem_event(service="a", score=0.9, tick=tick)) is not None
    with pytest.raises(PolicyError, match="65 rules cover service a") as info:
        compile_policies(load_policies(policies(65)))
    assert "at most 64 rules" in (info.value.hint or "")
