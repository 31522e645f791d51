"""Benchmark: closed-loop assessment of detector candidates, serial against parallel.

Figure: wall time of ``engine.chaos.assess.assess`` for K candidates (register, bundle,
sign, verify, and one campaign of N experiments each against the engine at x720, figures logged
into each candidate's MLflow run) with one spawned worker per candidate (at most one per core).
Baseline in the same run: the same assessment with one worker (candidates one after the other).
The per-candidate figure divides the serial time by K. The candidates are the chaos suite's
default detector logged K times (identical work per candidate); the campaign's seed is one no test
uses. ``SELFHEAL_BENCH_ASSESS_K`` (default 3) and ``SELFHEAL_BENCH_ASSESS_N`` (default 2) change
the size.

Run: .venv/bin/python tests/benchmarks/run.py --repeats 1 assess
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import Row

SEED = 4242  # no test draws this campaign


def _candidates(uri: str, k: int) -> list[str]:
    import mlflow

    from engine.chaos.api import default_detector
    from engine.tracking import registry
    from engine.tracking.model import log_detector

    pipeline = default_detector()
    mlflow.set_experiment("bench-assess")
    runs = []
    for i in range(k):
        with mlflow.start_run(run_name=f"candidate-{i}") as run:
            mlflow.log_metric("f1", 0.5)
            mlflow.set_tags(
                {
                    registry.TAG_KIND: "config",
                    registry.TAG_MODEL_URI: log_detector(pipeline),
                    registry.TAG_METRIC: "f1",
                }
            )
        runs.append(run.info.run_id)
    return runs


def assess_candidates(repeats: int) -> list[Row]:
    from engine.chaos.assess import assess
    from engine.home import Home, use_tracking

    k = int(os.environ.get("SELFHEAL_BENCH_ASSESS_K", "3"))
    n = int(os.environ.get("SELFHEAL_BENCH_ASSESS_N", "2"))
    workers = min(k, os.cpu_count() or 1)
    serial: list[float] = []
    parallel: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-assess-") as tmp:
        home = Home.resolve(Path(tmp) / "home").ensure()
        uri = home.tracking_uri
        use_tracking(uri)
        runs = _candidates(uri, k)
        kwargs: dict[str, Any] = {
            "home": home,
            "tracking_uri": uri,
            "n": n,
            "seed": SEED,
            "echo": lambda _: None,
        }
        for i in range(repeats):
            start = time.perf_counter()
            assess(runs, workers=1, out_dir=Path(tmp) / f"serial-{i}", **kwargs)
            serial.append(time.perf_counter() - start)
            start = time.perf_counter()
            assess(runs, workers=workers, out_dir=Path(tmp) / f"parallel-{i}", **kwargs)
            parallel.append(time.perf_counter() - start)
    return [
        Row(
            figure=f"closed-loop assessment per candidate ({n} experiments, serial)",
            unit="s",
            samples=[s / k for s in serial],
            higher_is_better=False,
            note=f"seed {SEED}, x720 clock",
        ),
        Row(
            figure=f"closed-loop assessment of {k} candidates x {n} experiments, {workers} workers (wall)",
            unit="s",
            samples=parallel,
            baseline="the same, one worker",
            baseline_samples=serial,
            higher_is_better=False,
            note=f"{os.cpu_count()} cores, shared",
        ),
    ]


BENCHMARKS = [assess_candidates]
