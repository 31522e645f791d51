"""NAB scoring: hand-computed tiny cases, a literal re-implementation of NAB's loop, the reference values."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import EvaluationError, InputError
from engine.evaluation.nab import (
    PROFILES,
    NabCorpus,
    NabSeries,
    load_corpus,
    load_results,
    probationary_length,
    score_results,
    write_results,
)

START = datetime(2020, 1, 1)
STEP = timedelta(minutes=5)


def s(y: float) -> float:
    """NAB's scaled sigmoid, written out independently of the implementation."""
    return -1.0 if y > 3 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def stamp(i: int) -> str:
    return (START + i * STEP).strftime("%Y-%m-%d %H:%M:%S")


def make_corpus(root: Path, files: dict[str, tuple[int, list[tuple[int, int]]]], values=None) -> Path:
    """A NAB-layout corpus: ``{"cat/f.csv": (n_rows, [(first_row, last_row), ...])}``."""
    windows = {}
    for key, (n, wins) in files.items():
        path = root / "data" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        vals = values[key] if values else np.arange(n, dtype=float)
        path.write_text("timestamp,value\n" + "".join(f"{stamp(i)},{vals[i]}\n" for i in range(n)))
        windows[key] = [[stamp(a) + ".000000", stamp(b) + ".000000"] for a, b in wins]
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    return root


def one_file(tmp_path: Path, n: int = 20, wins: list[tuple[int, int]] | None = None) -> NabCorpus:
    return load_corpus(make_corpus(tmp_path, {"cat/a.csv": (n, wins if wins is not None else [(10, 13)])}))


def scores_at(n: int, hits: dict[int, float]) -> np.ndarray:
    arr = np.zeros(n)
    for i, v in hits.items():
        arr[i] = v
    return arr


def raw_at(corpus: NabCorpus, scores: np.ndarray, profile: str = "standard", threshold: float = 0.5) -> float:
    report = score_results(corpus, {"cat/a.csv": scores}, thresholds={profile: threshold})
    return report.profiles[profile].total.raw


# --- hand-computed cases -------------------------------------------------------------------------


def test_probationary_length_is_15_percent_capped_at_750() -> None:
    assert probationary_length(20) == 3
    assert probationary_length(4032) == 604
    assert probationary_length(15831) == 750


def test_detection_inside_a_window_earns_the_sigmoid_of_its_position(tmp_path: Path) -> None:
    corpus = one_file(tmp_path)  # window rows 10..13, width 4
    raw = raw_at(corpus, scores_at(20, {11: 1.0}))
    assert raw == pytest.approx(s(-(13 - 11 + 1) / 4) / s(-1.0), abs=1e-12)


def test_only_the_earliest_detection_in_a_window_counts(tmp_path: Path) -> None:
    corpus = one_file(tmp_path)
    assert raw_at(corpus, scores_at(20, {10: 1.0, 12: 1.0, 13: 1.0})) == pytest.approx(1.0, abs=1e-12)
    assert raw_at(corpus, scores_at(20, {12: 1.0, 13: 1.0})) == pytest.approx(s(-0.5) / s(-1), abs=1e-12)


def test_missed_window_costs_fn_weight(tmp_path: Path) -> None:
    corpus = one_file(tmp_path)
    assert raw_at(corpus, np.zeros(20), "standard") == -1.0
    assert raw_at(corpus, np.zeros(20), "reward_low_FN_rate") == -2.0


def test_false_positive_before_any_window_costs_the_full_fp_weight(tmp_path: Path) -> None:
    corpus = one_file(tmp_path)
    assert raw_at(corpus, scores_at(20, {5: 1.0, 10: 1.0})) == pytest.approx(1.0 - 0.11, abs=1e-12)
    assert raw_at(corpus, scores_at(20, {5: 1.0, 10: 1.0}), "reward_low_FP_rate") == pytest.approx(
        1.0 - 0.22, abs=1e-12
    )


def test_false_positive_after_a_window_is_softened_by_distance(tmp_path: Path) -> None:
    corpus = one_file(tmp_path)
    near = raw_at(corpus, scores_at(20, {10: 1.0, 15: 1.0}))
    assert near == pytest.approx(1.0 + 0.11 * s((15 - 13) / (4 - 1)), abs=1e-12)
    far = raw_at(corpus, scores_at(20, {10: 1.0, 19: 1.0}))
    assert far == pytest.approx(1.0 + 0.11 * s(6 / 3), abs=1e-12)
    assert far < near < 1.0


def test_probationary_rows_are_not_scored(tmp_path: Path) -> None:
    corpus = one_file(tmp_path)  # probation = rows 0..2
    assert raw_at(corpus, scores_at(20, {0: 1.0, 2: 1.0, 10: 1.0})) == pytest.approx(1.0, abs=1e-12)


def test_detection_is_score_at_or_above_threshold(tmp_path: Path) -> None:
    corpus = one_file(tmp_path)
    assert raw_at(corpus, scores_at(20, {10: 0.5}), threshold=0.5) == pytest.approx(1.0)
    assert raw_at(corpus, scores_at(20, {10: 0.4999}), threshold=0.5) == -1.0


def test_threshold_optimisation_picks_the_best_total(tmp_path: Path) -> None:
    corpus = one_file(tmp_path)
    # FP at 0.9 (cost 0.11), window row 11 at 0.8, everything else 0.1 (detecting all is bad)
    scores = np.full(20, 0.1)
    scores[5], scores[11] = 0.9, 0.8
    report = score_results(corpus, {"cat/a.csv": scores})
    std = report.profiles["standard"]
    assert std.threshold == 0.8
    assert std.total.raw == pytest.approx(s(-0.75) / s(-1) - 0.11, abs=1e-12)
    assert (std.total.tp, std.total.fp, std.total.fn) == (1, 1, 0)
    assert std.score == pytest.approx(100 * (std.total.raw + 1) / 2, abs=1e-9)


def test_nothing_detected_scores_zero_and_perfect_scores_hundred(tmp_path: Path) -> None:
    corpus = one_file(tmp_path)
    half = dict.fromkeys(PROFILES, 0.5)
    null = score_results(corpus, {"cat/a.csv": np.zeros(20)}, thresholds=half)
    assert all(p.score == 0.0 for p in null.profiles.values())
    perfect = score_results(corpus, {"cat/a.csv": scores_at(20, {10: 1.0})}, thresholds=half)
    assert all(p.score == pytest.approx(100.0) for p in perfect.profiles.values())


def test_profiles_come_from_the_corpus_config_with_builtin_defaults(tmp_path: Path) -> None:
    root = make_corpus(tmp_path, {"cat/a.csv": (20, [(10, 13)])})
    assert dict(load_corpus(root).profiles) == dict(PROFILES)
    (root / "config").mkdir()
    (root / "config" / "profiles.json").write_text(
        json.dumps(
            {"mine": {"CostMatrix": {"tpWeight": 2.0, "fnWeight": 0.5, "fpWeight": 0.3, "tnWeight": 1}}}
        )
    )
    corpus = load_corpus(root)
    assert list(corpus.profiles) == ["mine"]
    report = score_results(corpus, {"cat/a.csv": np.zeros(20)})
    assert report.profiles["mine"].total.raw == -0.5


def test_categories_are_broken_down_and_windowless_ones_report_raw(tmp_path: Path) -> None:
    root = make_corpus(tmp_path, {"a/x.csv": (20, [(10, 13)]), "b/y.csv": (20, [])})
    corpus = load_corpus(root)
    report = score_results(corpus, {"a/x.csv": scores_at(20, {10: 1.0}), "b/y.csv": scores_at(20, {5: 1.0})})
    std = report.profiles["standard"]
    assert std.by_category["a"].normalized(std.profile) == pytest.approx(100.0)
    assert std.by_category["b"].normalized(std.profile) is None
    assert std.by_category["b"].fp == 1


def test_results_round_trip_through_nab_layout_files(tmp_path: Path) -> None:
    corpus = one_file(tmp_path / "corpus")
    series = corpus.series["cat/a.csv"]
    scores = np.linspace(0, 1, 20)
    path = write_results(tmp_path / "out", "mydet", series, scores)
    assert path == tmp_path / "out" / "cat" / "mydet_a.csv"
    assert path.read_text().splitlines()[0] == "timestamp,value,anomaly_score,label"
    assert path.read_text().splitlines()[11].endswith(",1")  # row 10 is inside the window
    name, loaded = load_results(tmp_path / "out", corpus)
    assert name == "mydet"
    np.testing.assert_array_equal(loaded["cat/a.csv"], scores)


def test_bad_inputs_fail_with_clear_errors(tmp_path: Path) -> None:
    corpus = one_file(tmp_path / "corpus")
    with pytest.raises(InputError, match=r"combined_windows\.json"):
        load_corpus(tmp_path)
    with pytest.raises(EvaluationError, match="no results for 1 of 1"):
        load_results(tmp_path / "corpus", corpus, detector="nobody")
    with pytest.raises(EvaluationError, match="NaN"):
        score_results(corpus, {"cat/a.csv": np.full(20, np.nan)})
    with pytest.raises(EvaluationError, match="19 scores for 20 rows"):
        score_results(corpus, {"cat/a.csv": np.zeros(19)})
    with pytest.raises(EvaluationError, match="unknown profiles"):
        score_results(corpus, {"cat/a.csv": np.zeros(20)}, thresholds={"nope": 0.5})


# --- a literal transcription of NAB's sweep, to check the vectorised one ------------------------


def nab_reference_raw(series: list[NabSeries], scores: list[np.ndarray], prof, threshold: float) -> float:
    """NAB v1.1's per-row loop (sweeper.calcSweepScore + scoreDataSet), one file at a time."""
    total = 0.0
    for ser, sc in zip(series, scores, strict=True):
        n = len(sc)
        prob = probationary_length(n)
        wins = list(ser.windows)
        cur = None
        prev_right = prev_width = None
        best: dict[int, float] = {}
        counted = set()
        for i in range(n):
            if wins and i == wins[0][0]:
                cur = wins.pop(0)
            if cur is not None:
                width = cur[1] - cur[0] + 1
                weight = s(-(cur[1] - i + 1) / width) * prof.tp / s(-1.0)
                name = cur[0]
            else:
                weight = -1.0 if prev_right is None else s(abs(prev_right - i) / (prev_width - 1))
                weight *= prof.fp
                name = None
            if i >= prob:
                if name is not None:
                    counted.add(name)
                if sc[i] >= threshold:
                    if name is None:
                        total += weight
                    else:
                        best[name] = max(best.get(name, -math.inf), weight)
            if cur is not None and i == cur[1]:
                prev_right, prev_width, cur = cur[1], cur[1] - cur[0] + 1, None
        total += sum(best.values()) - prof.fn * len(counted - set(best))
    return total


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=12, max_value=60),
    starts=st.lists(st.integers(min_value=0, max_value=55), max_size=3, unique=True),
    width=st.integers(min_value=2, max_value=6),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_sweep_matches_nab_loop_at_every_threshold(n: int, starts: list[int], width: int, seed: int) -> None:
    wins: list[tuple[int, int]] = []
    for a in sorted(starts):
        b = min(a + width - 1, n - 1)
        if b > a and (not wins or a > wins[-1][1] + 1):
            wins.append((a, b))
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(n), 1)  # ties on purpose
    ts = np.array([np.datetime64(START + i * STEP, "us") for i in range(n)])
    series = NabSeries("c/f.csv", ts, np.zeros(n), tuple(wins))
    corpus = NabCorpus(Path("."), {"c/f.csv": series}, PROFILES)
    for name, prof in PROFILES.items():
        optimised = score_results(corpus, {"c/f.csv": scores}, profiles={name: prof}).profiles[name]
        candidates = [1.1, *sorted(set(scores.tolist()), reverse=True)]
        brute = [nab_reference_raw([series], [scores], prof, t) for t in candidates]
        assert optimised.total.raw == pytest.approx(max(brute), abs=1e-9)
        assert optimised.threshold == candidates[int(np.argmax(np.round(brute, 9)))]
        for t in candidates:
            fixed = score_results(corpus, {"c/f.csv": scores}, thresholds={name: t}, profiles={name: prof})
            assert fixed.profiles[name].total.raw == pytest.approx(
                nab_reference_raw([series], [scores], prof, t), abs=1e-9
            )


# --- the published reference, when the NAB subset is present ------------------------------------

PUBLISHED = {
    "standard": 0.5421876907348634,
    "reward_low_FP_rate": 0.5751955032348636,
    "reward_low_FN_rate": 0.5421876907348634,
}


def test_reproduces_the_reference_numenta_scores(nab_corpus: Path) -> None:
    corpus = load_corpus(nab_corpus)
    name, scores = load_results(nab_corpus / "reference" / "numenta", corpus)
    assert name == "numenta"
    at_published = score_results(corpus, scores, thresholds=PUBLISHED)
    expected = {"standard": 70.2396, "reward_low_FP_rate": 63.4392, "reward_low_FN_rate": 74.3626}
    # the README gives 4 decimals: equal once rounded like it
    for profile, value in expected.items():
        assert round(at_published.profiles[profile].score, 4) == value
    optimised = score_results(corpus, scores)
    expected = {"standard": 70.2529, "reward_low_FP_rate": 65.3505, "reward_low_FN_rate": 74.3715}
    for profile, value in expected.items():
        assert round(optimised.profiles[profile].score, 4) == value
    assert optimised.profiles["standard"].total.windows == 69
    assert optimised.profiles["standard"].threshold == pytest.approx(0.555459, abs=1e-6)


def test_corpus_can_be_restricted_to_categories(tmp_path: Path) -> None:
    root = make_corpus(tmp_path, {"a/x.csv": (20, [(10, 13)]), "b/y.csv": (20, [])})
    assert list(load_corpus(root, categories=["b"]).series) == ["b/y.csv"]
    assert list(load_corpus(root).subset(["a"]).series) == ["a/x.csv"]
    with pytest.raises(InputError, match="no category"):
        load_corpus(root, categories=["c"])
    with pytest.raises(EvaluationError, match="unknown categories"):
        load_corpus(root).subset(["c"])


def test_a_row_that_goes_back_in_time_is_kept_and_placed_in_windows_by_its_time(tmp_path: Path) -> None:
    """Issue 15: a timestamp going backwards refused the whole corpus; NAB scores rows as they are."""
    root = make_corpus(tmp_path, {"cat/a.csv": (40, [(10, 20)])})
    path = root / "data" / "cat" / "a.csv"
    lines = path.read_text().splitlines()
    lines[1 + 25] = lines[1 + 15].split(",")[0] + ",7.0"  # row 25 goes back to row 15's time
    lines[1 + 30] = lines[1 + 29].split(",")[0] + ",7.0"  # row 30 repeats row 29's time
    path.write_text("\n".join(lines) + "\n")
    series = load_corpus(root).series["cat/a.csv"]
    assert (series.backwards, series.repeated) == (1, 1)
    assert len(series.values) == 40 and series.values[25] == 7.0  # kept, in file order
    assert series.windows == ((10, 20),)  # the window still closes at its end time's first row


def test_the_corpus_is_read_by_the_ingest_reader_and_a_bad_row_is_named(tmp_path: Path) -> None:
    """One NAB reader: scoring reads the rows `selfheal ingest` reads; a row it refuses is named."""
    from engine.telemetry.readers import read_nab

    root = make_corpus(tmp_path, {"cat/a.csv": (20, [(10, 13)]), "cat/b.csv": (20, [])})
    corpus = load_corpus(root)
    ingested = read_nab(root).points.filter(pl.col("service") == "cat/a").sort("line")
    np.testing.assert_array_equal(corpus.series["cat/a.csv"].values, ingested["value"].to_numpy())
    path = root / "data" / "cat" / "b.csv"
    lines = path.read_text().splitlines()
    lines[5] = lines[5].split(",")[0] + ",inf"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"b\.csv: line 6: non_finite_value"):
        load_corpus(root)
    labels = root / "labels" / "combined_windows.json"
    labels.write_text(json.dumps({"cat/a.csv": []}))
    path.write_text("\n".join(lines[:5]) + "\n")
    with pytest.raises(InputError, match=r"no entry for cat/b\.csv"):
        load_corpus(root)
