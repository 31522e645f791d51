"""Each incident kind moves the metrics it should, on its root and (through the graph) its dependents.

Most checks compare the noise-free platform model with and without one fault at the same times,
so the effect is isolated from seasonality (test_synth.py checks the labeled windows of a generated
history, noise included).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.errors import InputError
from engine.telemetry.synth import Controls, Fault, PlatformModel, load_config

T0 = 1_767_600_000.0  # 2026-01-05 08:00 UTC
HOUR = 3600.0


@pytest.fixture(scope="module")
def model() -> PlatformModel:
    return PlatformModel(load_config(), seed=0)


def _run(model: PlatformModel, fault: Fault, hours: float = 10.0) -> tuple[np.ndarray, dict, dict]:
    t = T0 + 60.0 * np.arange(int(hours * 60))
    return t, model.values(t), model.values(t, [fault])


def _at(t: np.ndarray, when: float) -> int:
    return int(np.searchsorted(t, when))


def test_latency_creep_ramps_slowly_and_spreads_to_callers(model: PlatformModel) -> None:
    fault = Fault(
        "latency_creep", "vector-db", start=T0 + HOUR, end=T0 + 7 * HOUR, magnitude=2.0, ramp_s=6 * HOUR
    )
    t, base, hit = _run(model, fault)
    ratio = hit["vector-db"]["latency_p50_ms"] / base["vector-db"]["latency_p50_ms"]
    start, end = _at(t, fault.start), _at(t, fault.end)
    assert np.allclose(ratio[:start], 1.0) and np.allclose(ratio[end:], 1.0)
    assert ratio[start + 30] < 1.1  # half an hour in: barely moved (slow)
    assert ratio[end - 1] > 1.9  # at full ramp: at least the magnitude
    assert np.all(np.diff(ratio[start:end]) >= -1e-9)  # monotone ramp
    for caller in ("inference-a", "inference-b", "gateway"):
        assert (hit[caller]["latency_p50_ms"][end - 1] > base[caller]["latency_p50_ms"][end - 1]).all()
    assert hit["vector-db"]["cpu_util"][end - 1] > base["vector-db"]["cpu_util"][end - 1] + 0.05


def test_memory_leak_climbs_thrashes_then_restarts(model: PlatformModel) -> None:
    fault = Fault(
        "memory_leak",
        "inference-a",
        start=T0 + HOUR,
        end=T0 + 5 * HOUR,
        magnitude=3.0,
        ramp_s=4 * HOUR,
        recovery_s=120,
    )
    t, base, hit = _run(model, fault)
    a, b = hit["inference-a"], base["inference-a"]
    start, end = _at(t, fault.start), _at(t, fault.end)
    mem = a["memory_util"]
    assert mem[end - 1] > 0.9 > b["memory_util"][end - 1] + 0.2  # climbs close to OOM
    assert np.all(np.diff(mem[start:end]) >= -1e-9)
    assert a["latency_p99_ms"][end - 1] > 1.5 * b["latency_p99_ms"][end - 1]  # GC thrash near the top
    assert a["cpu_util"][end - 1] > b["cpu_util"][end - 1] + 0.1
    assert math.isclose(a["latency_p50_ms"][start + 30], b["latency_p50_ms"][start + 30], rel_tol=1e-9)
    assert a["error_rate"][end] == pytest.approx(1.0)  # the OOM-like restart
    assert a["request_rate"][end] == pytest.approx(0.0)
    assert hit["gateway"]["error_rate"][end] > 0.4  # callers see the restart
    after = end + 5
    assert mem[after] == pytest.approx(b["memory_util"][after])  # memory back to its baseline
    assert a["error_rate"][after] == pytest.approx(b["error_rate"][after])


def test_memory_leak_left_alone_keeps_restarting(model: PlatformModel) -> None:
    """Live use: with no remediation (end = inf) the leak is a sawtooth of OOM kills."""
    fault = Fault("memory_leak", "vector-db", start=T0, magnitude=3.0, ramp_s=2 * HOUR, recovery_s=120)
    t = T0 + 10.0 * np.arange(int(7 * HOUR / 10))
    err = model.values(t, [fault])["vector-db"]["error_rate"]
    restarts = np.flatnonzero(np.diff((err > 0.99).astype(int)) == 1)
    assert len(restarts) == 3


def test_stale_index_decays_precision_and_raises_downstream_variability(model: PlatformModel) -> None:
    fault = Fault(
        "stale_index",
        "vector-db",
        start=T0 + HOUR,
        end=T0 + 7 * HOUR,
        magnitude=0.4,
        ramp_s=6 * HOUR,
        recovery_s=1200,
    )
    t, base, hit = _run(model, fault)
    start, end = _at(t, fault.start), _at(t, fault.end)
    prec = hit["vector-db"]["retrieval_precision"]
    assert prec[start + 10] > 0.95 * prec[start - 1]  # slow: ten minutes in, almost unchanged
    assert prec[end - 1] < 0.65 * prec[start - 1]
    assert np.all(np.diff(prec[start:end]) <= 1e-12)
    assert hit["vector-db"]["retrieval_hit_rate"][end - 1] < base["vector-db"]["retrieval_hit_rate"][end - 1]
    for inf in ("inference-a", "inference-b"):
        assert hit[inf]["response_variability"][end - 1] > base[inf]["response_variability"][end - 1] + 0.15
    # latency is not what a stale index moves
    np.testing.assert_allclose(hit["gateway"]["latency_p50_ms"], base["gateway"]["latency_p50_ms"])
    # the refresh restores it within the recovery time
    back = _at(t, fault.label_end) + 1
    assert prec[back] == pytest.approx(base["vector-db"]["retrieval_precision"][back])
    assert prec[end + 10] < base["vector-db"]["retrieval_precision"][end + 10]


def test_bad_deploy_jumps_on_one_replica_only(model: PlatformModel) -> None:
    fault = Fault(
        "bad_deploy", "inference-b", start=T0 + HOUR, end=T0 + 2 * HOUR, magnitude=0.1, recovery_s=60
    )
    t, base, hit = _run(model, fault, hours=3)
    start = _at(t, fault.start)
    b, b0 = hit["inference-b"], base["inference-b"]
    assert b["response_variability"][start + 2] > b0["response_variability"][start + 2] + 0.2  # abrupt
    assert b["error_rate"][start + 2] > b0["error_rate"][start + 2] + 0.08
    assert b["tokens_per_s"][start + 2] < b0["tokens_per_s"][start + 2]
    assert hit["gateway"]["error_rate"][start + 2] > base["gateway"]["error_rate"][start + 2] + 0.03
    # the healthy replica only feels retries on the shared dependencies: a rounding error
    np.testing.assert_allclose(
        hit["inference-a"]["response_variability"], base["inference-a"]["response_variability"], rtol=1e-3
    )
    end = _at(t, fault.label_end) + 1
    assert b["error_rate"][end] == pytest.approx(b0["error_rate"][end])  # rollback clears it


@pytest.mark.parametrize("root", ["vector-db", "feature-store"])
def test_dependency_outage_cascades_to_every_dependent(model: PlatformModel, root: str) -> None:
    fault = Fault(
        "dependency_outage", root, start=T0 + HOUR, end=T0 + 1.5 * HOUR, magnitude=0.8, recovery_s=180
    )
    t, base, hit = _run(model, fault, hours=3)
    mid = _at(t, T0 + 1.25 * HOUR)
    assert hit[root]["error_rate"][mid] > 0.7
    assert hit[root]["latency_p50_ms"][mid] > 5 * base[root]["latency_p50_ms"][mid]
    assert hit[root]["request_rate"][mid] > base[root]["request_rate"][mid]  # callers retry
    victims = ["inference-a", "inference-b", "gateway"] + (["ingestion"] if root == "feature-store" else [])
    for victim in victims:
        assert hit[victim]["error_rate"][mid] > base[victim]["error_rate"][mid] + 0.05, victim
        assert hit[victim]["latency_p50_ms"][mid] > base[victim]["latency_p50_ms"][mid], victim
    if root == "feature-store":
        backlog = hit["ingestion"]["queue_depth"]
        assert backlog[mid] > 100 * base["ingestion"]["queue_depth"][mid]
        assert backlog[_at(t, fault.end) + 5] < backlog[_at(t, fault.end) - 1]  # drains afterwards
    late = _at(t, T0 + 2.9 * HOUR)
    for svc in hit:
        for metric in ("error_rate", "latency_p50_ms"):
            assert hit[svc][metric][late] == pytest.approx(base[svc][metric][late]), (svc, metric)


def test_one_tick_equals_the_batch_at_that_tick(model: PlatformModel) -> None:
    """The live simulation evaluates single ticks; it must see exactly what the history shows."""
    faults = [
        Fault(
            "memory_leak", "feature-store", start=T0 + HOUR, end=T0 + 4 * HOUR, magnitude=3, ramp_s=3 * HOUR
        ),
        Fault("dependency_outage", "vector-db", start=T0 + 2 * HOUR, magnitude=0.5),  # still active
    ]
    t = T0 + 10.0 * np.arange(int(5 * HOUR / 10))
    batch = model.values(t, faults)
    for k in (0, 700, 1100, 1441, len(t) - 1):
        tick = model.values(t[k : k + 1], faults)
        for svc, metrics in batch.items():
            for metric, arr in metrics.items():
                assert tick[svc][metric][0] == pytest.approx(arr[k], rel=1e-12), (svc, metric, k)


def test_controls_scale_capacity_and_shift_traffic(model: PlatformModel) -> None:
    t = T0 + 600.0 * np.arange(12)
    base = model.values(t)
    scaled = model.values(t, controls=Controls(capacity={"inference-a": 2.0}))
    assert (scaled["inference-a"]["queue_depth"] < base["inference-a"]["queue_depth"]).all()
    shifted = model.values(t, controls=Controls(share={"inference-a": 0.0, "inference-b": 1.0}))
    assert np.allclose(shifted["inference-a"]["request_rate"], 0.0)
    np.testing.assert_allclose(shifted["inference-b"]["request_rate"], base["gateway"]["request_rate"])


def test_faults_on_the_wrong_service_are_refused(model: PlatformModel) -> None:
    t = np.array([T0])
    with pytest.raises(InputError, match="stale_index cannot happen on 'gateway'"):
        model.values(t, [Fault("stale_index", "gateway", start=T0)])
    with pytest.raises(InputError, match="unknown service 'inference-z'"):
        model.values(t, [Fault("bad_deploy", "inference-z", start=T0)])


def test_observation_noise_is_seeded_and_centred(model: PlatformModel) -> None:
    t = T0 + 10.0 * np.arange(5000)
    a = model.values(t, rng=np.random.default_rng(3))
    b = model.values(t, rng=np.random.default_rng(3))
    clean = model.values(t)
    np.testing.assert_array_equal(a["gateway"]["latency_p50_ms"], b["gateway"]["latency_p50_ms"])
    assert not np.array_equal(a["gateway"]["latency_p50_ms"], clean["gateway"]["latency_p50_ms"])
    ratio = a["inference-a"]["request_rate"].mean() / clean["inference-a"]["request_rate"].mean()
    assert ratio == pytest.approx(1.0, abs=0.01)
