"""Shared builders for the tracking tests (real parts: synth data in a DuckDB file, MLflow on SQLite).

Not fixtures in conftest (owned by the lead): plain functions the tracking test modules import.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from engine.home import Home

START = datetime(2026, 1, 5)

SMALL_FEATURES: dict[str, Any] = {
    "interval": "1m",
    "metrics": {
        "latency_p99_ms": {"transforms": [{"kind": "zscore", "window": 30, "min_std": 1.0}]},
        "error_rate": {
            "aggregation": "max",
            "transforms": [{"kind": "zscore", "window": 30, "min_std": 0.002}],
        },
        "memory_util": {"transforms": [{"kind": "diff", "lag": 30}]},
        "cpu_util": {"transforms": [{"kind": "zscore", "window": 30, "min_std": 0.01}]},
    },
}


def small_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "test-sweep",
        "features": SMALL_FEATURES,
        "detectors": [{"class": "HBOS", "grid": {"n_bins": [10, 20]}}],
        "threshold": {"kind": "quantile", "q": 0.99},
        "evaluation": {"split": {"train_fraction": 0.5}, "metric": "f1"},
    }
    spec.update(overrides)
    return spec


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def make_home(root: Path, days: float = 3.0, seed: int = 0) -> Home:
    """A home folder with ``days`` of synthetic telemetry and its incidents in the store."""
    from engine.telemetry.store import TelemetryStore
    from engine.telemetry.synth import generate, load_config

    home = Home.resolve(root).ensure()
    data = generate(load_config(), days=days, seed=seed, start=START)
    with TelemetryStore(home.telemetry_db) as store:
        store.insert_points(data.points, source="synth")
        store.insert_incidents(data.incidents)
    return home


def random_points(n: int = 400, seed: int = 0) -> pl.DataFrame:
    """Long-format telemetry: two services, the SMALL_FEATURES metrics, one point a minute."""
    rng = np.random.default_rng(seed)
    stamps = pl.datetime_range(START, START + timedelta(minutes=n - 1), "1m", time_unit="us", eager=True)
    return pl.concat(
        [
            pl.DataFrame({"ts": stamps, "service": svc, "metric": metric, "value": rng.normal(10.0, 1.0, n)})
            for svc in ("svc-a", "svc-b")
            for metric in SMALL_FEATURES["metrics"]
        ]
    )


def small_detector(model: str = "HBOS", params: dict[str, Any] | None = None, **config: Any) -> Any:
    """An unfitted stream detector over SMALL_FEATURES, every service one role."""
    from engine.detectors.stream import StreamDetector
    from engine.detectors.stream_config import StreamConfig

    doc = {
        "name": "small",
        "groups": [{"name": "default", "features": SMALL_FEATURES}],
        "model": {"class": model, "params": dict(params or {})},
        "calibration": "ecdf",
        **config,
    }
    return StreamDetector(StreamConfig.model_validate(doc))


def fitted_detector(model: str = "HBOS", n: int = 400, **config: Any) -> Any:
    """``small_detector`` fitted on ``random_points(n)``."""
    return small_detector(model, **config).fit(random_points(n))


def feature_frame(n: int = 400, seed: int = 0) -> tuple[Any, pl.DataFrame]:
    """A FeatureSpec and the batch feature frame of ``random_points``."""
    from engine.features import FeatureSpec, batch_features

    spec = FeatureSpec.model_validate(SMALL_FEATURES)
    return spec, batch_features(random_points(n, seed), spec)


def test_make_home_is_idempotent(tmp_path: Path) -> None:
    from engine.telemetry.store import TelemetryStore

    home = make_home(tmp_path / "h", days=0.5)
    again = make_home(tmp_path / "h", days=0.5)
    assert home == again
    with TelemetryStore(home.telemetry_db, read_only=True) as store:
        points = store.summary()["points"]
    assert points > 0
