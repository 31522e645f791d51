"""NAB: threshold-sweep speed of the scorer, and points/s of the streaming runner on the subset.

1. The scorer evaluates every distinct score as a candidate threshold with one sort and cumulative
   sums. Baseline in the same run: re-scoring the corpus from scratch at each threshold (what a
   direct transcription of the definition does), measured on a sample of thresholds.
2. ``nab run`` with the default configuration over the whole NAB subset (issue 7 target: under
   5 minutes for ~250k points, i.e. >= 850 points/s). Baseline: the engine's OnlineFeatures alone
   on the same points (the floor any online configuration pays).

Needs the NAB subset (SELFHEAL_NAB_DIR or ../shared/data/nab); skipped without it.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from harness import Row

from engine.evaluation.nab import NabCorpus, load_corpus, load_results, score_results, threshold_curve
from engine.evaluation.streaming import DEFAULT_SPEC, METRIC, epoch_seconds, run_corpus

REPO = Path(__file__).resolve().parents[2]


def _corpus() -> Path | None:
    raw = os.environ.get("SELFHEAL_NAB_DIR")
    path = Path(raw) if raw else REPO.parent / "shared" / "data" / "nab"
    return path if (path / "labels" / "combined_windows.json").is_file() else None


def bench_threshold_sweep(repeats: int) -> list[Row]:
    root = _corpus()
    if root is None:
        print("bench_nab: NAB subset not found; skipped", file=sys.stderr)
        return []
    corpus = load_corpus(root)
    _, scores = load_results(root / "reference" / "numenta", corpus)
    thresholds, _ = threshold_curve(corpus, scores, "standard")
    n_candidates = len(thresholds)
    sample = thresholds[:: max(1, n_candidates // 20)]
    sweep, naive = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        score_results(corpus, scores)  # all three profiles, optimised
        sweep.append(3 * n_candidates / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for threshold in sample:
            score_results(
                corpus,
                scores,
                thresholds={"standard": float(threshold)},
                profiles={"standard": corpus.profiles["standard"]},
            )
        naive.append(len(sample) / (time.perf_counter() - t0))
    return [
        Row(
            figure="NAB threshold sweep (numenta results, subset)",
            unit="thresholds/s",
            samples=sweep,
            baseline="re-score at each threshold",
            baseline_samples=naive,
            note=f"{n_candidates} candidates x 3 profiles, {corpus.n_points} rows",
        )
    ]


def _features_only(corpus: NabCorpus) -> float:
    """Points/s of OnlineFeatures alone with the default spec's raw feature (the baseline)."""
    from engine.features import FeatureSpec, OnlineFeatures

    t0 = time.perf_counter()
    for series in corpus.series.values():
        ts = epoch_seconds(series.timestamps)
        online = OnlineFeatures(
            FeatureSpec.model_validate({"interval": 300, "metrics": {METRIC: {"transforms": ["raw"]}}})
        )
        online.push_many(ts.tolist(), [series.key] * len(ts), [METRIC] * len(ts), series.values.tolist())
        online.flush()
    return corpus.n_points / (time.perf_counter() - t0)


def bench_streaming_run(repeats: int) -> list[Row]:
    root = _corpus()
    if root is None:
        return []
    corpus = load_corpus(root)
    rates, base, score = [], [], float("nan")
    for _ in range(max(1, min(repeats, 2))):  # one run takes ~30 s on the 2-core machine
        result = run_corpus(corpus, DEFAULT_SPEC)
        rates.append(result.points_per_second)
        score = result.report.profiles["standard"].score
        base.append(_features_only(corpus))
    return [
        Row(
            figure="nab run default spec, whole subset (1 process)",
            unit="points/s",
            samples=rates,
            baseline="OnlineFeatures alone, same points",
            baseline_samples=base,
            target=">= 850 (subset < 5 min)",
            note=f"NAB standard {score:.2f}, {corpus.n_points} points",
        )
    ]


def bench_subset_two_cores(repeats: int) -> list[Row]:
    """Issue 15's target: the whole subset in <= 60 s on 2 cores (``nab run --workers 2``) with the
    shipped default; baseline: the same in one process, in the same run."""
    root = _corpus()
    if root is None:
        return []
    corpus = load_corpus(root)
    n = max(1, min(repeats, 2))
    one = [run_corpus(corpus, DEFAULT_SPEC).seconds for _ in range(n)]
    two = [run_corpus(corpus, DEFAULT_SPEC, workers=2).seconds for _ in range(n)]
    return [
        Row(
            figure="nab run default spec, whole subset, --workers 2",
            unit="s",
            samples=two,
            baseline="default spec, 1 process",
            baseline_samples=one,
            higher_is_better=False,
            target="<= 60 s",
            note=f"{corpus.n_points / statistics.median(two):,.0f} points/s ({corpus.n_points} points)",
        )
    ]


def bench_point_ensemble_two_cores(repeats: int) -> list[Row]:
    """The four point detectors beside the default's z-score (the grid's ``zs-all4``), the whole
    subset with ``--workers 2`` (issue 15's target, <= 60 s); baseline: the default alone, same run."""
    from engine.evaluation.cv import candidate_specs

    root = _corpus()
    if root is None:
        return []
    corpus = load_corpus(root)
    spec = next(s for s in candidate_specs(None) if s.name == "zs-all4")
    n = max(1, min(repeats, 2))
    base = [run_corpus(corpus, DEFAULT_SPEC, workers=2).seconds for _ in range(n)]
    runs = [run_corpus(corpus, spec, workers=2) for _ in range(n)]
    seconds = [r.seconds for r in runs]
    return [
        Row(
            figure="nab run default + 4 point detectors, whole subset, --workers 2",
            unit="s",
            samples=seconds,
            baseline="default spec alone, --workers 2",
            baseline_samples=base,
            higher_is_better=False,
            target="<= 60 s",
            note=f"{corpus.n_points / statistics.median(seconds):,.0f} points/s; "
            f"NAB standard {runs[0].report.profiles['standard'].score:.2f} (in-sample)",
        )
    ]


BENCHMARKS = [
    bench_threshold_sweep,
    bench_streaming_run,
    bench_subset_two_cores,
    bench_point_ensemble_two_cores,
]
