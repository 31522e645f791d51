"""The engine runs the one stream detector, state and all, in a real ``selfheal run`` process:

- its per-series state survives a kill -9: an engine SIGKILLed mid-stream and started again
  scores the rest of the stream exactly as an engine that never stopped, whether it scores
  in-process or in scoring workers (each keeps its own services' states, and a restart with
  another number of workers finds them). The detector here has state worth keeping (z-scores over
  30 buckets, the anomaly likelihood), so an engine restarted without its states (the control,
  ``state_snapshot_s: null``) re-warms and scores differently;
- fed a NAB file over HTTP, it emits the scores ``selfheal nab run`` gives that file
  (``engine.evaluation.streaming.run_series``, the function ``nab run`` replays each file with).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the engine loads this file by path (the factory)

from test_runtime_support import TOKEN, AdminServer, EngineProcess, ndjson, write_rules

pytestmark = pytest.mark.slow

SERVICES = ("inference-a", "vector-db", "gateway")
METRICS = {"latency_p99_ms": (100.0, 5.0), "memory_util": (0.5, 0.02)}
T0 = 1_750_000_000.0


def _config() -> Any:
    from engine.detectors.stream_config import StreamConfig

    z = {"kind": "zscore", "window": 30, "min_std": 0.001}
    return StreamConfig.model_validate(
        {
            "groups": [
                {
                    "name": "default",
                    "features": {
                        "interval": "1s",
                        "metrics": {m: {"transforms": ["raw", z]} for m in METRICS},
                    },
                }
            ],
            "model": {"class": "IForest", "params": {"n_estimators": 30}},
            "calibration": "ecdf",
            "postprocess": {"likelihood": True, "average": 5, "history": 200, "reestimate": 20},
            "seed": 0,
        }
    )


def build_components(settings: Any) -> Any:
    """Factory for ``selfheal run``: the rules from SELFHEAL_TEST_RULES; the NAB default detector
    with the probation of the file in SELFHEAL_TEST_NAB_PROBATION, else the stateful one above."""
    from engine.runtime.components import assemble
    from engine.testing.detectors import fit_on_rows

    rules = os.environ["SELFHEAL_TEST_RULES"]
    probation = os.environ.get("SELFHEAL_TEST_NAB_PROBATION")
    if probation is not None:
        return assemble(_nab_detector(int(probation)), rules, bundle_version="b-test", detector_version="nab")
    rng = np.random.default_rng(0)
    columns = []
    for mean, sd in METRICS.values():
        columns += [rng.normal(mean, sd, 1500), rng.normal(0.0, 1.0, 1500)]
    det = fit_on_rows(_config(), np.column_stack(columns))
    return assemble(det, rules, bundle_version="b-test", detector_version="1")


def _nab_detector(probation: int) -> Any:
    """``nab run``'s default detector, its warm-up the file's probationary period (``nab run``
    gives each file's state that warm-up; the engine's states take the spec's)."""
    from engine.evaluation.streaming import DEFAULT_SPEC, nab_detector

    features = DEFAULT_SPEC.features.model_copy(update={"warmup_points": probation})
    return nab_detector(DEFAULT_SPEC.model_copy(update={"features": features}))


def _points(start: int, seconds: int) -> list[dict[str, Any]]:
    out = []
    for k in range(start, start + seconds):
        rng = np.random.default_rng(k)
        for service in SERVICES:
            for metric, (mean, sd) in METRICS.items():
                value = mean + rng.normal() * sd * (4.0 if 150 <= k < 160 else 1.0)
                out.append({"ts": T0 + k + 0.5, "service": service, "metric": metric, "value": float(value)})
    return out


class Run(EngineProcess):
    """``selfheal run`` on this file's detector, a fixed journal and a scores file."""

    def __init__(
        self, tmp: Path, admin_url: str, *, snapshot: str, env: dict[str, str] | None = None
    ) -> None:
        self.scores = tmp / "scores.ndjson"
        super().__init__(
            tmp,
            write_rules(tmp / "rules", admin_url),
            config=f"tick_s: 0.02\nscores_file: {self.scores}\nstate_snapshot_s: {snapshot}\n",
            env=env,
            components=Path(__file__).resolve(),
        )
        self.base, self.workers = self.settings, 0

    def start(self, timeout_s: float = 120.0) -> float:
        """Start with ``workers`` scoring workers (a restart may change them)."""
        self.settings = f"{self.base}workers: {self.workers}\n"
        return super().start(timeout_s)

    def push(self, items: list[dict[str, Any]], step: int = 60 * len(SERVICES) * len(METRICS)) -> None:
        """Push in requests of ``step`` points, then wait until every point was scored."""
        for i in range(0, len(items), step):
            r = httpx.post(f"{self.url}/v1/telemetry", content=ndjson(items[i : i + step]), timeout=30)
            assert r.status_code == 202, r.text
        headers = {"Authorization": f"Bearer {TOKEN}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = httpx.get(f"{self.url}/v1/status", headers=headers, timeout=5).json()
            if status["points_scored"] >= len(items):
                assert status["points_scored"] == len(items)
                return
            time.sleep(0.05)
        raise AssertionError(f"points not scored in time:\n{self.tail()}")

    def rows(self) -> list[tuple[float, str, float]]:
        lines = self.scores.read_text().splitlines()
        return [(r["ts"], r["service"], r["score"]) for r in map(json.loads, lines)]


def _killed_midway(
    tmp: Path,
    admin_url: str,
    first: list[Any],
    rest: list[Any],
    snapshot: str,
    workers: tuple[int, int] = (0, 0),
) -> Run:
    run = Run(tmp, admin_url, snapshot=snapshot)
    run.workers = workers[0]
    run.start()
    run.push(first)
    run.kill9()
    run.workers = workers[1]
    run.start()
    run.push(rest)
    run.stop()
    return run


def test_scores_after_a_kill_9_equal_those_of_an_engine_that_never_stopped(tmp_path: Path) -> None:
    first, rest = _points(0, 140), _points(140, 60)
    with AdminServer() as admin:
        never = Run(tmp_path / "never", admin.url, snapshot="0")
        never.start()
        never.push(first + rest)
        never.stop()
        killed = _killed_midway(tmp_path / "killed", admin.url, first, rest, "0")
        cold = _killed_midway(tmp_path / "cold", admin.url, first, rest, "null")
        # Two scoring workers killed with their engine, restarted as three (services change workers).
        workers = _killed_midway(tmp_path / "workers", admin.url, first, rest, "0", workers=(2, 3))
    want = never.rows()
    assert len(want) > 150 * len(SERVICES)  # every bucket but the last open one of each service
    assert killed.rows() == want  # scores bit for bit, in the same order
    assert "restored the detector state of 3 series" in killed.log.read_text()
    # Without its states the restarted engine re-warms: the rows after the kill differ.
    after = [r for r in cold.rows() if r[0] >= T0 + 140]
    assert after != [r for r in want if r[0] >= T0 + 140]
    # Workers score in parallel: their rows are compared as a set, not in file order.
    assert sorted(workers.rows()) == sorted(want)


def test_the_engine_fed_a_nab_file_over_http_scores_it_as_nab_run(nab_corpus: Path, tmp_path: Path) -> None:
    from engine.evaluation.nab import load_corpus
    from engine.evaluation.streaming import epoch_seconds, run_series, scores_per_row

    corpus = load_corpus(nab_corpus, categories=["realAWSCloudwatch"])
    series = corpus.series[sorted(corpus.series)[0]]
    want = run_series(_nab_detector(series.probation), series)
    ts = epoch_seconds(series.timestamps)
    items = [
        {"ts": t, "service": "nab-file", "metric": "value", "value": float(v)}
        for t, v in zip(ts.tolist(), series.values.tolist(), strict=True)
    ]
    with AdminServer() as admin:
        run = Run(
            tmp_path, admin.url, snapshot="null", env={"SELFHEAL_TEST_NAB_PROBATION": str(series.probation)}
        )
        run.start()
        run.push(items, step=500)
        run.stop()
    rows = run.rows()
    assert len(rows) > 0.9 * len(ts)
    bucket_ts = np.array([r[0] for r in rows])
    interval = float(np.median(np.diff(bucket_ts)))
    scored = [type("Row", (), {"ts": t, "score": s}) for t, _, s in rows]
    got = np.clip(scores_per_row(ts, scored, interval), 0.0, 1.0)
    closed = ts < bucket_ts[-1] + interval  # the engine's last bucket is open: nab run flushes it
    assert closed.sum() >= len(ts) - 2
    np.testing.assert_array_equal(got[closed], want[closed])
