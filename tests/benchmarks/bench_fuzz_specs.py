"""The long fuzz run of the spec loaders: hostile inputs per second and how many were tried.

The CI test (tests/test_fuzz_specs.py) tries 40 inputs per kind; this tries
``SELFHEAL_BENCH_FUZZ_EXAMPLES`` (default 200) per kind and repeat, with the same mutations and the
same contract (accepted, or refused naming file and line or field; no traceback; under 3 s each).
Any broken contract fails the benchmark with Hypothesis' minimal failing input. The baseline is
loading the valid file the mutations start from, in the same run. The fuzz rate includes
generating and writing each input (Hypothesis, a temporary folder), so the ratio is below 1 even
though most refusals stop early.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from harness import Row
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared fuzz module

from spec_fuzz import KINDS, attempt, dump, seeds, spec_input, warm_up

EXAMPLES = int(os.environ.get("SELFHEAL_BENCH_FUZZ_EXAMPLES", "200"))


def _fuzz(kind: str) -> tuple[float, int, int, float]:
    """(inputs/s, inputs tried, refused, slowest seconds) for one Hypothesis run."""
    tried = refused = 0
    slowest = 0.0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(spec_input(kind))
    def run(data: bytes) -> None:
        nonlocal tried, refused, slowest
        with tempfile.TemporaryDirectory() as tmp:
            outcome = attempt(kind, Path(tmp), data)
        tried += 1
        refused += not outcome.accepted
        slowest = max(slowest, outcome.seconds)

    started = time.perf_counter()
    run()
    return tried / (time.perf_counter() - started), tried, refused, slowest


def _valid_rate(kind: str, n: int = 20) -> float:
    data = dump(seeds()[kind][0])
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        for _ in range(n):
            assert attempt(kind, Path(tmp), data).accepted
        return n / (time.perf_counter() - started)


def bench_fuzz_specs(repeats: int) -> list[Row]:
    rows = []
    for kind in KINDS:
        with tempfile.TemporaryDirectory() as tmp:
            warm_up(kind, Path(tmp))
        rates, baseline, tried, refused, slowest = [], [], 0, 0, 0.0
        for _ in range(repeats):
            rate, n, bad, slow = _fuzz(kind)
            rates.append(rate)
            baseline.append(_valid_rate(kind))
            tried, refused, slowest = tried + n, refused + bad, max(slowest, slow)
        rows.append(
            Row(
                figure=f"fuzz {kind}: hostile inputs/s",
                unit="inputs/s",
                samples=rates,
                baseline=f"valid {kind} file loads/s",
                baseline_samples=baseline,
                target="no traceback, each < 3 s",
                note=f"{tried} tried, {refused} refused, 0 contract failures, slowest {slowest:.2f} s",
            )
        )
    return rows


BENCHMARKS = [bench_fuzz_specs]
