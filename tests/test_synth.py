"""The synthetic AI platform: reproducibility, topology, scaling, incident schedule and labels."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from engine.errors import ConfigError
from engine.telemetry.synth import (
    INCIDENT_KINDS,
    PlatformModel,
    SynthData,
    generate,
    load_config,
    schedule_incidents,
)

EXPECTED_TOPOLOGY = {
    "vector-db": [],
    "feature-store": [],
    "inference-a": ["vector-db", "feature-store"],
    "inference-b": ["vector-db", "feature-store"],
    "gateway": ["inference-a", "inference-b"],
    "ingestion": ["feature-store"],
}
ALL_METRICS = {
    "request_rate",
    "latency_p50_ms",
    "latency_p99_ms",
    "ttft_ms",
    "tokens_per_s",
    "error_rate",
    "queue_depth",
    "retrieval_hit_rate",
    "retrieval_precision",
    "response_variability",
    "cpu_util",
    "memory_util",
    "gpu_util",
}


@pytest.fixture(scope="module")
def history() -> SynthData:
    """Two weeks of the shipped platform, shared by the tests that read labeled incidents."""
    return generate(load_config(), days=14, seed=0)


def _series(data: SynthData, service: str, metric: str) -> pl.DataFrame:
    return data.points.filter((pl.col("service") == service) & (pl.col("metric") == metric))


def _window_mean(data: SynthData, service: str, metric: str, lo: datetime, hi: datetime) -> float:
    s = _series(data, service, metric).filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
    assert s.height > 0, (service, metric, lo, hi)
    return float(s["value"].mean())  # type: ignore[arg-type]


def test_same_seed_gives_identical_frames_and_another_seed_does_not() -> None:
    cfg = load_config()
    a = generate(cfg, days=2, seed=7)
    b = generate(cfg, days=2, seed=7)
    c = generate(cfg, days=2, seed=8)
    assert a.points.equals(b.points)
    assert a.incidents.equals(b.incidents)
    assert not a.points.equals(c.points)


def test_frames_follow_the_store_contract(history: SynthData) -> None:
    assert history.points.schema == pl.Schema(
        {"ts": pl.Datetime("us"), "service": pl.String, "metric": pl.String, "value": pl.Float64}
    )
    assert history.incidents.schema == pl.Schema(
        {
            "service": pl.String,
            "kind": pl.String,
            "start": pl.Datetime("us"),
            "end": pl.Datetime("us"),
            "source": pl.String,
        }
    )
    assert history.incidents["source"].unique().to_list() == ["synth"]
    assert history.points["value"].is_finite().all()
    assert set(history.points["metric"].unique()) == ALL_METRICS


def test_topology_and_the_metrics_each_role_emits(history: SynthData) -> None:
    assert history.topology == EXPECTED_TOPOLOGY
    emitted = {
        svc: set(g["metric"])
        for (svc,), g in history.points.select("service", "metric").unique().group_by("service")
    }
    assert {"ttft_ms", "tokens_per_s", "gpu_util", "response_variability"} <= emitted["inference-a"]
    assert {"retrieval_hit_rate", "retrieval_precision"} <= emitted["vector-db"]
    assert "gpu_util" not in emitted["gateway"] and "retrieval_precision" not in emitted["inference-a"]
    for metrics in emitted.values():
        assert {"request_rate", "error_rate", "cpu_util", "memory_util", "latency_p50_ms"} <= metrics


def test_every_series_is_a_complete_10s_grid(history: SynthData) -> None:
    n_ticks = 14 * 86400 // 10
    counts = history.points.group_by("service", "metric").len()
    assert counts["len"].unique().to_list() == [n_ticks]
    ts = _series(history, "gateway", "request_rate")["ts"]
    assert ts[0] == datetime(2026, 1, 5) and ts.diff().drop_nulls().unique().to_list() == [
        timedelta(seconds=10)
    ]
    assert history.end - history.start == timedelta(days=14)
    fractions = history.points.filter(
        pl.col("metric").str.ends_with("_util") | (pl.col("metric") == "error_rate")
    )
    assert fractions["value"].min() >= 0.0 and fractions["value"].max() <= 1.0  # type: ignore[operator]


def test_daily_seasonality_and_correlated_load(history: SynthData) -> None:
    gw = _series(history, "gateway", "request_rate").with_columns(hour=pl.col("ts").dt.hour())
    by_hour = gw.group_by("hour").agg(pl.col("value").mean()).sort("hour")["value"].to_numpy()
    assert by_hour.max() > 2.0 * by_hour.min()  # a visible day/night cycle
    assert int(np.argmax(by_hour)) in range(13, 18)  # peak around the configured 15:00 UTC
    quiet = history.points.filter(pl.col("ts") < datetime(2026, 1, 6))  # warm-up day: no incidents
    wide = quiet.pivot("service", index=["ts", "metric"], values="value")
    rate = wide.filter(pl.col("metric") == "request_rate")
    assert np.corrcoef(rate["gateway"], rate["vector-db"])[0, 1] > 0.9
    assert np.corrcoef(rate["gateway"], rate["inference-a"])[0, 1] > 0.9
    q = wide.filter(pl.col("metric") == "queue_depth")
    assert np.corrcoef(rate["gateway"], q["inference-a"])[0, 1] > 0.5  # load drives queues downstream


def test_fourteen_days_have_every_kind_labeled_on_a_valid_root(history: SynthData) -> None:
    inc = history.incidents
    assert set(inc["kind"]) == set(INCIDENT_KINDS)
    roles = {
        "vector-db": "vector_db",
        "feature-store": "feature_store",
        "gateway": "gateway",
        "ingestion": "ingestion",
    }
    for row in inc.iter_rows(named=True):
        role = roles.get(row["service"], "inference")
        if row["kind"] == "stale_index":
            assert role == "vector_db"
        if row["kind"] == "bad_deploy":
            assert role == "inference"
        if row["kind"] == "dependency_outage":
            assert role in {"vector_db", "feature_store"}
        assert history.start + timedelta(hours=24) <= row["start"] < row["end"] <= history.end
    # windows never overlap, and keep the configured gap
    ordered = inc.sort("start")
    gaps = (ordered["start"].shift(-1) - ordered["end"]).drop_nulls()
    assert gaps.min() >= timedelta(minutes=90)  # type: ignore[operator]


def test_incident_counts_scale_with_days() -> None:
    cfg = load_config()
    model = PlatformModel(cfg)
    t0 = 1.7676e9
    short = schedule_incidents(cfg, model, t0, t0 + 3 * 86400, np.random.default_rng(1))
    long = schedule_incidents(cfg, model, t0, t0 + 28 * 86400, np.random.default_rng(1))
    expected = sum(k.per_day for k in cfg.incidents.kinds.values())
    assert len(long) > len(short)
    assert abs(len(long) - 28 * expected) <= len(cfg.incidents.kinds)


def test_fewer_services_keep_a_dependency_closed_prefix() -> None:
    data = generate(load_config(), days=1, services=3, seed=0)
    assert data.topology == {
        "vector-db": [],
        "feature-store": [],
        "inference-a": ["vector-db", "feature-store"],
    }
    assert set(data.points["service"].unique()) == set(data.topology)
    one = generate(load_config(), days=0.5, services=1, seed=0)
    assert one.topology == {"vector-db": []}


def test_more_services_add_inference_replicas_that_share_the_traffic() -> None:
    cfg = load_config()
    data = generate(cfg, days=0.5, services=8, seed=0)
    assert set(data.topology) == set(EXPECTED_TOPOLOGY) | {"inference-c", "inference-d"}
    assert data.topology["gateway"] == ["inference-a", "inference-b", "inference-c", "inference-d"]
    assert data.topology["inference-d"] == ["vector-db", "feature-store"]
    model = PlatformModel(cfg, services=8)
    t = 1.7676e9 + 600.0 * np.arange(50)
    vals = model.values(t)
    total = sum(vals[f"inference-{x}"]["request_rate"] for x in "abcd")
    np.testing.assert_allclose(total, vals["gateway"]["request_rate"], rtol=1e-9)
    six = PlatformModel(cfg).values(t)
    assert (vals["inference-a"]["request_rate"] < six["inference-a"]["request_rate"]).all()


@pytest.mark.parametrize("services", [0, 65])
def test_services_out_of_range_is_a_config_error(services: int) -> None:
    with pytest.raises(ConfigError, match="--services must be between 1 and 64"):
        generate(load_config(), days=1, services=services)


@pytest.mark.parametrize("days", [0, -1, 400])
def test_days_out_of_range_is_a_config_error(days: float) -> None:
    with pytest.raises(ConfigError, match="--days"):
        generate(load_config(), days=days)


def test_start_moves_the_time_range() -> None:
    data = generate(load_config(), days=0.25, seed=0, start=datetime(2025, 3, 1, 12))
    assert data.points["ts"].min() == datetime(2025, 3, 1, 12)
    assert data.end == datetime(2025, 3, 1, 18)


def test_labeled_windows_show_their_signature_in_the_noisy_history(history: SynthData) -> None:
    before = timedelta(hours=1)
    for inc in history.incidents.iter_rows(named=True):
        root, kind, start, end = inc["service"], inc["kind"], inc["start"], inc["end"]
        pre = (start - before, start)
        if kind == "stale_index":
            late = (end - timedelta(hours=1), end - timedelta(minutes=20))  # before the refresh completes
            assert (
                _window_mean(history, root, "retrieval_precision", *late)
                < _window_mean(history, root, "retrieval_precision", *pre) - 0.1
            )
            assert _window_mean(history, "inference-a", "response_variability", *late) > _window_mean(
                history, "inference-a", "response_variability", *pre
            )
        elif kind == "bad_deploy":
            during = (start + timedelta(minutes=2), end - timedelta(minutes=1))
            for metric in ("response_variability", "error_rate"):
                assert _window_mean(history, root, metric, *during) > 1.5 * _window_mean(
                    history, root, metric, *pre
                )
        elif kind == "dependency_outage":
            during = (start + timedelta(minutes=1), end - timedelta(minutes=3))
            for svc in (root, "inference-a", "inference-b", "gateway"):
                assert _window_mean(history, svc, "error_rate", *during) > 3 * _window_mean(
                    history, svc, "error_rate", *pre
                ), svc
        elif kind == "memory_leak":
            late = (end - timedelta(minutes=20), end - timedelta(minutes=2))
            assert (
                _window_mean(history, root, "memory_util", *late)
                > _window_mean(history, root, "memory_util", *pre) + 0.15
            )
        elif kind == "latency_creep":
            late = (end - timedelta(minutes=30), end)
            assert _window_mean(history, root, "latency_p50_ms", *late) > 1.2 * _window_mean(
                history, root, "latency_p50_ms", *pre
            )


def test_a_run_too_big_for_memory_is_refused_before_building_it() -> None:
    with pytest.raises(ConfigError, match="more than the 60,000,000 one run builds in memory") as info:
        generate(load_config(), days=300, services=64)
    assert "--start" in (info.value.hint or "")


def test_incidents_start_on_the_tick_grid() -> None:
    data = generate(load_config(), days=3.3, seed=4)
    assert data.incidents.height > 0
    offsets = (data.incidents["start"] - data.start).dt.total_microseconds() % 10_000_000
    assert offsets.to_list() == [0] * data.incidents.height
