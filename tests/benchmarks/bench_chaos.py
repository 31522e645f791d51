"""Time to detect and recover per incident kind, and a campaign's wall time (``make bench``).

Figure: each kind's experiment (experiments/chaos/<kind>.yaml) run end to end — simulated platform,
the engine served over HTTP, policies, actuators, verification — with TTD and TTR in platform
seconds. Baselines measured in the same run, on the same fault replayed on a fresh platform with
a manual clock: TTD of the same pipeline scoring batch features offline (the detector's own delay,
without ingestion, micro-batching, persistence rules or approvals), and the ideal TTR: acting at
that first anomalous row, plus the platform's physical recovery (rollout, rebuild, reconnect).

Campaign: ``selfheal chaos campaign`` at the seed the README's baseline figures come from (no test
uses it, nothing was tuned on it): wall seconds per experiment at x720, against the clock alone
in the same run (each experiment's platform span divided by the speed: what it would cost if
starting the engine, the warm-up and the teardown were free). ``SELFHEAL_BENCH_CAMPAIGN_N``
(default 50) and ``SELFHEAL_BENCH_CAMPAIGN_WORKERS`` (default 1) change its size and parallelism.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC
from pathlib import Path
from typing import Any

from harness import Row

from engine.chaos.api import EXPERIMENTS_DIR, default_detector, run_experiment
from engine.chaos.experiment import load_experiment

CAMPAIGN_SEED = 9173  # the README's baseline campaign: no test uses this seed
KINDS = ("memory_leak", "latency_creep", "stale_index", "bad_deploy", "dependency_outage")
APPROVAL_S = {"bad_deploy": 120.0}  # the experiment approves two minutes after the request


def _pipelines() -> dict[str, Any]:
    default = default_detector()  # one detector for every kind
    return dict.fromkeys(KINDS, default)


def _offline_ttd(kind: str, pipeline: Any) -> tuple[float | None, float]:
    """(first anomalous row after injection - injection, physical recovery after the action)."""
    import polars as pl

    from engine.simulation.clock import ManualClock
    from engine.simulation.live import SimulatedPlatform

    exp = load_experiment(EXPERIMENTS_DIR / f"{kind}.yaml")
    (fault,) = exp.faults
    start = exp.clock.start.replace(tzinfo=UTC).timestamp()  # naive UTC, the project's convention
    warm = pipeline.warmup_s
    clock = ManualClock(start - warm)
    platform = SimulatedPlatform(
        clock, seed=exp.platform.seed + 1000, index_rebuild_s=exp.platform.index_rebuild_s
    )
    platform.start_at(start - warm)
    clock.set(start)
    points = platform.advance_to(start)
    body = {"kind": fault.kind, "params": dict(fault.params)}
    platform.inject(fault.service, body)
    clock.set(start + 3600)
    points += platform.advance_to(start + 3600)
    frame = pl.DataFrame(
        {
            "ts": [int(p[0] * 1e6) for p in points],
            "service": [p[1] for p in points],
            "metric": [p[2] for p in points],
            "value": [p[3] for p in points],
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("us")))
    scored = pipeline.score_history(frame).filter(pl.col("service") == fault.service)
    scores = scored["score"].to_numpy()
    ts = scored["ts"].dt.epoch("us").to_numpy() / 1e6 + pipeline.interval_s  # bucket end
    hits = [t for t, s in zip(ts, scores, strict=True) if t > start and s > pipeline.threshold_]
    physics = {
        "memory_leak": exp.platform.restart_s,
        "latency_creep": exp.platform.restart_s,
        "dependency_outage": exp.platform.restart_s + float(fault.params.get("recovery_s", 60.0)),
        "bad_deploy": exp.platform.rollout_s,
        "stale_index": float(exp.platform.index_rebuild_s or fault.params.get("recovery_s", 300.0)),
    }[kind]
    return (hits[0] - start if hits else None), physics + APPROVAL_S.get(kind, 0.0)


def bench_detect_and_recover(repeats: int) -> list[Row]:
    pipelines = _pipelines()
    rows: list[Row] = []
    for kind in KINDS:
        ttd: list[float] = []
        ttr: list[float] = []
        passed = 0
        for i in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                result = run_experiment(
                    EXPERIMENTS_DIR / f"{kind}.yaml",
                    Path(tmp) / kind,
                    detector=pipelines[kind],
                    name=f"{kind}-{i}",
                )
            (fault,) = result.faults
            passed += result.passed
            if fault.ttd_s is not None:
                ttd.append(fault.ttd_s)
            if fault.ttr_s is not None:
                ttr.append(fault.ttr_s)
        offline = [_offline_ttd(kind, pipelines[kind]) for _ in range(1)]
        base_ttd = [d for d, _ in offline if d is not None]
        base_ttr = [d + p for d, p in offline if d is not None]
        note = f"{passed}/{repeats} runs passed"
        rows.append(
            Row(
                f"TTD {kind}",
                "s (platform)",
                ttd or [float("nan")],
                "batch scoring, offline",
                base_ttd,
                higher_is_better=False,
                note=note,
            )
        )
        rows.append(
            Row(
                f"TTR {kind}",
                "s (platform)",
                ttr or [float("nan")],
                "ideal: act at first anomalous row",
                base_ttr,
                higher_is_better=False,
                note=note,
            )
        )
    return rows


def bench_campaign(repeats: int) -> list[Row]:
    """One campaign (repeats do not apply: its experiments are the samples)."""
    from engine.chaos.campaign import generate_campaign
    from engine.chaos.campaign_run import run_campaign

    n = int(os.environ.get("SELFHEAL_BENCH_CAMPAIGN_N", "50"))
    workers = int(os.environ.get("SELFHEAL_BENCH_CAMPAIGN_WORKERS", "1"))
    with tempfile.TemporaryDirectory() as tmp:
        result = run_campaign(
            generate_campaign(n, CAMPAIGN_SEED), Path(tmp) / "campaign", workers=workers, echo=print
        )
    ran = [o for o in result.outcomes if o["platform_s"] is not None]
    m = result.metrics()
    note = (
        f"seed {CAMPAIGN_SEED}, n={n}, {workers} worker(s): "
        f"healed {m['faults_healed']:.0f}/{m['faults']:.0f}, "
        f"victim actions {m['victim_actions']:.0f}, control actions {m['control_actions']:.0f}, "
        f"unapproved high-risk {m['unapproved_high_risk_actions']:.0f}; total {result.wall_s:.0f} s"
    )
    return [
        Row(
            "campaign wall time per experiment (x720)",
            "s",
            [o["wall_s"] for o in ran],
            "the clock alone (platform span / speed)",
            [o["platform_s"] / result.speed for o in ran],
            higher_is_better=False,
            note=note,
        )
    ]


BENCHMARKS = [bench_detect_and_recover, bench_campaign]
