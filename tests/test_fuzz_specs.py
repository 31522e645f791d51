"""Fuzzing every spec loader a person feeds (policy folders, sweep and chaos experiments, the engine
config): accepted, or refused naming the file and a line or field; never a traceback, never slow.

Bounded for CI (a few dozen inputs per kind, seconds in all); the long run is the benchmark
``tests/benchmarks/bench_fuzz_specs.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from spec_fuzz import KINDS, attempt, spec_input, warm_up

CI = settings(
    max_examples=40,
    deadline=None,  # the loaders' own time limit is asserted by ``attempt`` (LIMIT_S)
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_specs_are_accepted_or_refused_cleanly(kind: str, tmp_path: Path) -> None:
    warm_up(kind, tmp_path)

    @CI
    @given(spec_input(kind))
    def check(data: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            attempt(kind, Path(tmp), data)

    check()


def test_the_valid_seeds_are_accepted(tmp_path: Path) -> None:
    """The mutations start from valid files: the contract is only meaningful if those load."""
    from spec_fuzz import dump, seeds

    for kind in KINDS:
        for i, doc in enumerate(seeds()[kind]):
            folder = tmp_path / f"{kind}-{i}"
            folder.mkdir()
            assert attempt(kind, folder, dump(doc)).accepted, kind


def test_a_sweep_grid_of_astronomical_size_is_refused_at_once(tmp_path: Path) -> None:
    """Found by hand beside the fuzzer: 6 keys x 30 values (1 kB) enumerated 729 million configurations."""
    import yaml
    from spec_fuzz import REPO, dump

    doc = yaml.safe_load((REPO / "experiments" / "synth_pyod_sweep.yaml").read_text())
    keys = ("n_estimators", "max_samples", "max_features", "random_state", "n_jobs", "verbose")
    doc["detectors"] = [{"class": "IForest", "grid": {k: list(range(1, 31)) for k in keys}}]
    warm_up("experiment", tmp_path)
    outcome = attempt("experiment", tmp_path, dump(doc))
    assert not outcome.accepted and any("729,000,000 configurations" in p for p in outcome.problems)
