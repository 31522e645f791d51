"""The simulated platform: physics of faults and remediations, the admin API contract, /metrics."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.simulation.clock import ManualClock, ScaledClock
from engine.simulation.live import SimulatedPlatform
from engine.simulation.server import PlatformServer

T0 = 1_768_294_800.0  # 2026-01-13 09:00 UTC, a Tuesday
MAPPING = Path(__file__).resolve().parents[1] / "engine" / "simulation" / "prometheus_mapping.yaml"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def platform(clock: ManualClock) -> SimulatedPlatform:
    p = SimulatedPlatform(clock, seed=1, restart_s=60.0, rollout_s=60.0)
    p.start_at(T0)
    return p


@pytest.fixture
def server(platform: SimulatedPlatform) -> Iterator[PlatformServer]:
    with PlatformServer(platform, port=0) as srv:
        yield srv


def value(p: SimulatedPlatform, service: str, metric: str) -> float:
    """The noise-free value at the clock's now (what the physics says, without observation noise)."""
    return p.expected(p.clock.now())[service][metric]


def post(server: PlatformServer, path: str, body: dict, key: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers={"Idempotency-Key": key})


def test_a_restart_clears_a_memory_leak(platform: SimulatedPlatform, clock: ManualClock) -> None:
    healthy = value(platform, "inference-a", "memory_util")
    platform.inject("inference-a", {"kind": "memory_leak", "params": {"ramp_s": 1200}})
    clock.advance(900)
    assert value(platform, "inference-a", "memory_util") > healthy + 0.2
    platform.restart("inference-a", {})
    clock.advance(30)  # the rolling restart is still under way
    assert value(platform, "inference-a", "memory_util") > healthy + 0.2
    clock.advance(60)
    assert value(platform, "inference-a", "memory_util") == pytest.approx(healthy, abs=0.03)
    clock.advance(3600)  # and the leak does not come back
    assert value(platform, "inference-a", "memory_util") < healthy + 0.05


def test_a_restart_does_not_fix_a_stale_index_but_a_refresh_does_after_the_rebuild(
    platform: SimulatedPlatform, clock: ManualClock
) -> None:
    healthy = value(platform, "vector-db", "retrieval_precision")
    platform.inject(
        "vector-db", {"kind": "stale_index", "params": {"magnitude": 0.4, "ramp_s": 600, "recovery_s": 300}}
    )
    clock.advance(1800)
    stale = value(platform, "vector-db", "retrieval_precision")
    assert stale < healthy * 0.7
    platform.restart("vector-db", {})
    clock.advance(600)
    assert value(platform, "vector-db", "retrieval_precision") == pytest.approx(stale, abs=0.01)
    platform.refresh_index("vector-db", {"index": "vector-db-main"})
    clock.advance(60)  # rebuilding: better but not back
    assert stale < value(platform, "vector-db", "retrieval_precision") < healthy - 0.05
    clock.advance(300)
    assert value(platform, "vector-db", "retrieval_precision") == pytest.approx(healthy, abs=0.005)


def test_a_rollback_clears_a_bad_deploy_and_restores_the_version(
    platform: SimulatedPlatform, clock: ManualClock
) -> None:
    healthy = value(platform, "inference-a", "error_rate")
    platform.inject("inference-a", {"kind": "bad_deploy", "params": {"magnitude": 0.12}})
    assert platform.state("inference-a")["model_version"] == "v2"
    clock.advance(300)
    assert value(platform, "inference-a", "error_rate") > healthy + 0.1
    platform.restart("inference-a", {})  # a restart redeploys the same bad version
    clock.advance(300)
    assert value(platform, "inference-a", "error_rate") > healthy + 0.1
    out = platform.rollback_model("inference-a", {"version": None})
    assert out == {"ok": True, "previous": "v2", "version": "v1"}
    clock.advance(120)
    assert value(platform, "inference-a", "error_rate") == pytest.approx(healthy, abs=0.002)


def test_restarting_the_victims_of_an_outage_does_not_help_restarting_the_root_does(
    platform: SimulatedPlatform, clock: ManualClock
) -> None:
    healthy = value(platform, "gateway", "error_rate")
    platform.inject("vector-db", {"kind": "dependency_outage", "params": {"magnitude": 0.8}})
    clock.advance(300)
    assert value(platform, "inference-a", "error_rate") > 0.5  # the victims look sick too
    for victim in ("inference-a", "inference-b", "gateway"):
        platform.restart(victim, {})
    clock.advance(600)
    assert value(platform, "gateway", "error_rate") > 0.5
    platform.restart("vector-db", {})
    clock.advance(60 + 60 + 10)  # rollout, then connections re-established over recovery_s
    assert value(platform, "gateway", "error_rate") == pytest.approx(healthy, abs=0.003)


def test_scaling_out_relieves_queueing_and_traffic_shifts_between_replicas(
    platform: SimulatedPlatform, clock: ManualClock
) -> None:
    platform.inject("inference-b", {"kind": "latency_creep", "params": {"magnitude": 2.0, "ramp_s": 600}})
    clock.advance(900)
    slow_queue = value(platform, "inference-b", "queue_depth")
    assert platform.scale("inference-b", {"delta": 2}) == {"ok": True, "previous": 2, "replicas": 4}
    assert value(platform, "inference-b", "queue_depth") < slow_queue / 2
    before = value(platform, "inference-b", "request_rate")
    out = platform.shift_traffic("gateway", {"weights": {"inference-a": 0.9, "inference-b": 0.1}})
    assert out["previous"] == {"inference-a": 0.5, "inference-b": 0.5}
    assert value(platform, "inference-b", "request_rate") < before / 3


def test_ticks_are_in_time_order_and_carry_platform_time(
    platform: SimulatedPlatform, clock: ManualClock
) -> None:
    clock.advance(60)
    points = platform.advance_to(clock.now())
    assert len(points) == 6 * sum(len(platform.model.metrics(s)) for s in platform.services)
    ts = [p[0] for p in points]
    assert ts == sorted(ts) and ts[0] == T0 + 10 and ts[-1] == T0 + 60
    assert platform.advance_to(clock.now()) == []  # nothing new until the clock moves


def test_admin_api_contract_and_idempotency(server: PlatformServer, platform: SimulatedPlatform) -> None:
    first = post(server, "/admin/inference-a/scale", {"delta": 1}, "k-1")
    again = post(server, "/admin/inference-a/scale", {"delta": 1}, "k-1")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() == {"ok": True, "previous": 2, "replicas": 3}
    assert platform.services["inference-a"].replicas == 3  # applied once
    no_key = httpx.post(f"{server.url}/admin/inference-a/restart", json={})
    assert no_key.status_code == 400 and "Idempotency-Key" in no_key.json()["error"]
    unknown = post(server, "/admin/nope/restart", {}, "k-2")
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    bad = post(server, "/admin/inference-a/scale", {"replicas": "two"}, "k-3")
    assert bad.status_code == 422 and bad.json()["field"] == "replicas"
    wrong_kind = post(server, "/admin/gateway/faults", {"kind": "stale_index"}, "k-4")
    assert wrong_kind.status_code == 422 and wrong_kind.json()["field"] == "kind"
    fault = post(
        server, "/admin/vector-db/faults", {"kind": "stale_index", "params": {"magnitude": 0.3}}, "k-5"
    )
    fault_id = fault.json()["fault_id"]
    state = httpx.get(f"{server.url}/admin/vector-db/state").json()
    assert [f["fault_id"] for f in state["faults"]] == [fault_id] and state["replicas"] == 2
    cleared = httpx.delete(f"{server.url}/admin/vector-db/faults/{fault_id}")
    assert cleared.json() == {"ok": True, "cleared": 1}
    assert httpx.get(f"{server.url}/admin/vector-db/state").json()["faults"] == []
    rollback = post(server, "/admin/inference-b/rollback_model", {"version": None}, "k-6")
    assert rollback.status_code == 422 and "first version" in rollback.json()["error"]


def test_the_actions_simulator_backend_drives_the_platform(
    server: PlatformServer, platform: SimulatedPlatform
) -> None:
    from engine.actions import execute
    from engine.actions.targets import ServiceTarget, SimulatorConfig, TargetsConfig

    targets = TargetsConfig(
        defaults=ServiceTarget(backend="simulator", simulator=SimulatorConfig(url=server.url))
    )
    platform.inject("inference-a", {"kind": "bad_deploy", "params": {}})
    result = execute("rollback_model", {"version": None}, "inference-a", "dec-1:action", settings=targets)
    assert result.detail["version"] == "v1"
    assert result.inverse_params == {"version": "v2"}
    assert execute("restart", {}, "inference-a", "dec-2:action", settings=targets).detail["ok"] is True
    assert [(a.op, a.idempotency_key) for a in platform.admin_log[-2:]] == [
        ("rollback_model", "dec-1:action"),
        ("restart", "dec-2:action"),
    ]


def test_metrics_endpoint_is_prometheus_text_the_engine_can_scrape(
    server: PlatformServer, platform: SimulatedPlatform, clock: ManualClock
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from engine.runtime.sources import PromMapping

    clock.advance(30)
    platform.advance_to(clock.now())
    text = httpx.get(f"{server.url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["sim_retrieval_precision"].type == "gauge"
    points, refused = PromMapping.from_yaml(MAPPING).convert(text, now=0.0)
    assert refused == []
    assert {(s, m) for _, s, m, _ in points} == set(platform.latest)
    assert {ts for ts, *_ in points} == {T0 + 30}  # platform time, not the scraper's clock
    one = httpx.get(f"{server.url}/services/vector-db/metrics").text
    assert 'service="vector-db"' in one and 'service="gateway"' not in one


def test_scaled_clock_runs_a_day_in_a_minute() -> None:
    wall = [100.0]
    clock = ScaledClock(T0, wall=lambda: wall[0])
    wall[0] += 60.0
    assert clock.now() == pytest.approx(T0 + 86400.0)
    assert clock.wall_seconds(900.0) == pytest.approx(900.0 / 1440.0)
    clock.restart(T0)
    assert clock.now() == T0
    with pytest.raises(ValueError, match="speed"):
        ScaledClock(T0, speed=0)


def test_unremediated_faults_stay_active(platform: SimulatedPlatform, clock: ManualClock) -> None:
    platform.inject("feature-store", {"kind": "dependency_outage", "params": {"magnitude": 0.5}})
    clock.advance(7200)
    (fault,) = platform.faults
    assert math.isinf(fault.fault.end) and fault.cleared_at is None
    assert platform.clear_faults("feature-store") == 1
    assert fault.cleared_by == "operator" and fault.fault.end == clock.now()
