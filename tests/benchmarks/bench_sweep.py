"""Benchmark: an experiment sweep of 8 detector configurations over 14 days of synthetic data.

Figure: wall time of ``run_experiment`` (data load, features, parallel fits over the cores, plots,
MLflow tracking of a parent and 8 child runs with their pyfunc models). Baseline in the same run:
the same data load, features and 8 fits + evaluations, sequential in one process, without MLflow
or plots. A ratio below 1 means parallelism pays for the tracking.

Run: .venv/bin/python tests/benchmarks/run.py sweep
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from harness import Row

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "experiments" / "synth_pyod_sweep.yaml"
DAYS = 14


def synth_home(root: Path, days: float = DAYS):  # type: ignore[no-untyped-def]
    """A home whose store holds ``days`` of the synthetic platform (seed 0) from 2026-01-05."""
    from datetime import datetime

    from engine.home import Home
    from engine.telemetry.store import TelemetryStore
    from engine.telemetry.synth import generate, load_config

    home = Home.resolve(root).ensure()
    data = generate(load_config(), days=days, seed=0, start=datetime(2026, 1, 5))
    with TelemetryStore(home.telemetry_db) as store:
        store.insert_points(data.points, source="synth")
        store.insert_incidents(data.incidents)
    return home


def sweep_8_configs(repeats: int) -> list[Row]:
    from engine.tracking.experiment import default_workers, evaluate_config, prepare, run_experiment
    from engine.tracking.spec import load_spec

    loaded = load_spec(SPEC)
    configs = loaded.spec.configs()
    assert len(configs) == 8, f"{SPEC} must expand to 8 configurations"
    samples: list[float] = []
    baseline: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        home = synth_home(Path(tmp) / "home")
        for i in range(repeats):
            uri = f"sqlite:///{Path(tmp) / f'mlflow-{i}.db'}"
            # Create the tracking database outside the timed region (migrations take seconds).
            from engine.tracking.registry import ensure_experiment

            ensure_experiment(loaded.spec.experiment_name, tracking_uri=uri, home=home)
            start = time.perf_counter()
            run_experiment(loaded, home=home, tracking_uri=uri, progress=False)
            samples.append(time.perf_counter() - start)

            start = time.perf_counter()
            prepared = prepare(loaded, home.telemetry_db)
            for config in configs:
                result = evaluate_config(config, prepared)
                assert result.ok, result.error
            baseline.append(time.perf_counter() - start)
    return [
        Row(
            figure=f"experiment sweep: 8 configs x {DAYS} d synth, MLflow-tracked (wall)",
            unit="s",
            samples=samples,
            baseline="same 8 fits sequential, no MLflow/plots",
            baseline_samples=baseline,
            higher_is_better=False,
            note=f"{default_workers(len(configs))} worker processes on {os.cpu_count()} cores",
        )
    ]


BENCHMARKS = [sweep_8_configs]
