"""Benchmark: a sweep on Ray against the same sweep on this machine's processes, and Ray's start.

Figures, each with its baseline from the same run (the order alternates between repeats):
- wall time of ``run_experiment`` for 4 configurations (IForest x2, HBOS x2 over 7 days of synthetic
  data, MLflow-tracked) with ``executor="ray"`` (a Ray started here with 2 CPUs, no dashboard, a
  100 MB object store, stopped at the end), baseline ``executor="local"`` with 2 worker processes;
- Ray's start and stop on its own (``RayPool(2)`` then ``close``: ``ray start --head --block`` as a
  child process, ``ray.init`` connecting to it, ``ray.shutdown`` and SIGTERM) with one trivial
  task, baseline the same task through 2 spawned processes (``LocalPool``).
The load average before and after goes into the note: on a shared 2-core machine it decides most of
the figure. Skips (no row) without Ray.

Run: .venv/bin/python tests/benchmarks/run.py --repeats 2 ray
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from pathlib import Path

import yaml
from bench_sweep import synth_home
from harness import Row

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "experiments" / "synth_pyod_sweep.yaml"
DAYS = 7
DETECTORS = [
    {"class": "IForest", "grid": {"n_estimators": [50, 100]}},
    {"class": "HBOS", "grid": {"n_bins": [10, 20]}},
]


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def sweep_on_ray(repeats: int) -> list[Row]:
    if importlib.util.find_spec("ray") is None:
        print("bench_ray: Ray is not installed (pip install 'selfheal[ray]'); no rows")
        return []
    from engine.pools import LocalPool, RayPool
    from engine.testing.pools import square
    from engine.tracking.experiment import run_experiment
    from engine.tracking.registry import ensure_experiment
    from engine.tracking.spec import load_spec

    spec = yaml.safe_load(SPEC.read_text())
    spec["detectors"] = DETECTORS
    loads = [_load()]
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    starts: dict[str, list[float]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        path = Path(tmp) / "sweep4.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        loaded = load_spec(path)
        assert len(loaded.spec.configs()) == 4
        home = synth_home(Path(tmp) / "home", days=DAYS)
        for i in range(repeats):
            order = ("local", "ray") if i % 2 == 0 else ("ray", "local")
            for executor in order:
                uri = f"sqlite:///{Path(tmp) / f'mlflow-{executor}-{i}.db'}"
                ensure_experiment(loaded.spec.experiment_name, tracking_uri=uri, home=home)  # migrations
                start = time.perf_counter()
                run_experiment(
                    loaded, home=home, tracking_uri=uri, workers=2, executor=executor, progress=False
                )
                walls[executor].append(time.perf_counter() - start)
            for executor in order:
                start = time.perf_counter()
                with RayPool(2) if executor == "ray" else LocalPool(2) as pool:
                    assert dict(pool.map(square, 1, [3])) == {0: 9}
                starts[executor].append(time.perf_counter() - start)
    loads.append(_load())
    note = f"2 CPUs for either; load average (1/5 min) {loads[0]} before, {loads[1]} after"
    return [
        Row(
            figure=f"sweep of 4 configs x {DAYS} d synth on Ray (local, 2 CPUs), MLflow-tracked (wall)",
            unit="s",
            samples=walls["ray"],
            baseline="same sweep, --executor local --workers 2",
            baseline_samples=walls["local"],
            higher_is_better=False,
            note=note,
        ),
        Row(
            figure="local Ray start + one task + stop (ray start --head, 2 CPUs, no dashboard, 100 MB)",
            unit="s",
            samples=starts["ray"],
            baseline="one task through 2 spawned processes (start + stop)",
            baseline_samples=starts["local"],
            higher_is_better=False,
            note=note,
        ),
    ]


BENCHMARKS = [sweep_on_ray]
