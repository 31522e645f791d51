"""Leave-one-category-out cross-validation: every category scored by choices made without it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import typer
from test_nab_scoring import make_corpus
from typer.testing import CliRunner

from engine.errors import ConfigError, EvaluationError, SpecError
from engine.evaluation import commands
from engine.evaluation.cv import candidate_specs, cross_validate, format_cv, grid_specs
from engine.evaluation.nab import NabCorpus, load_corpus, score_results
from engine.evaluation.streaming import DEFAULT_SPEC

N = 400


def three_categories(root: Path) -> Path:
    """Three categories of two files each; every file has one window at rows 300..320."""
    rng = np.random.default_rng(7)
    keys = [f"{cat}/{f}.csv" for cat in ("a", "b", "c") for f in ("one", "two")]
    return make_corpus(root, {k: (N, [(300, 320)]) for k in keys}, {k: rng.normal(size=N) for k in keys})


@pytest.fixture
def corpus(tmp_path: Path) -> NabCorpus:
    return load_corpus(three_categories(tmp_path / "corpus"))


def _scores(corpus: NabCorpus, hit_row: dict[str, int]) -> dict[str, np.ndarray]:
    """0.1 everywhere; 0.9 at ``hit_row[category]`` (a detection in the window when 300..320)."""
    out = {}
    for key, s in corpus.series.items():
        arr = np.full(len(s.values), 0.1)
        arr[hit_row[s.category]] = 0.9
        out[key] = arr
    return out


def test_each_category_is_scored_by_the_candidate_best_on_the_others(corpus: NabCorpus) -> None:
    # "early" detects at the start of every window except in c (a false positive there);
    # "late" detects late in a and b, early in c. In-sample "early" wins (2 of 3 categories).
    early = _scores(corpus, {"a": 300, "b": 300, "c": 100})
    late = _scores(corpus, {"a": 318, "b": 318, "c": 300})
    folds: list[str] = []
    report = cross_validate(corpus, {"early": early, "late": late}, on_fold=folds.append)
    assert folds == ["a", "b", "c"]
    std = {f.category: f for f in report.folds if f.profile == "standard"}
    # holding a out: early (b right, c wrong) ties late... computed independently below
    for held, fold in std.items():
        train = corpus.subset(c for c in corpus.categories if c != held)
        best = max(
            ("early", "late"),
            key=lambda n: score_results(train, {"early": early, "late": late}[n]).profiles["standard"].score,
        )
        assert fold.candidate == best
        chosen = score_results(train, {"early": early, "late": late}[best]).profiles["standard"]
        assert fold.threshold == chosen.threshold
        expect = score_results(
            corpus.subset([held]),
            {"early": early, "late": late}[best],
            thresholds={"standard": chosen.threshold},
        )
        assert fold.held_out == expect.profiles["standard"].total
    assert std["c"].candidate == "early" and std["c"].held_out.tp == 0  # chosen without c: it misses c
    # the cross-validated figure pools the held-out raw scores over all windows
    raw = sum(f.held_out.raw for f in std.values())
    windows = sum(f.held_out.windows for f in std.values())
    assert report.nested("standard") == pytest.approx(100 * (raw + windows) / (2 * windows))
    assert report.nested("standard") < max(report.in_sample[c]["standard"] for c in ("early", "late"))
    text = format_cv(report)
    assert "cross-validated" in text and "early" in text
    metrics = report.as_dict()
    assert metrics["cv.standard.score"] == report.nested("standard")
    assert "cv.standard.c.score" in metrics and "candidate.late.in_sample.standard" in metrics


def test_one_category_cannot_be_cross_validated(corpus: NabCorpus) -> None:
    with pytest.raises(EvaluationError, match="needs two or more"):
        cross_validate(corpus.subset(["a"]), {"x": _scores(corpus, {"a": 300, "b": 300, "c": 300})})


def test_the_shipped_candidate_grid_is_valid_and_holds_the_default() -> None:
    specs = candidate_specs(None)
    assert len({s.name for s in specs}) == len(specs) >= 2
    same = [s.name for s in specs if s.model_copy(update={"name": DEFAULT_SPEC.name}) == DEFAULT_SPEC]
    assert same == ["z4-avg20-sup50"]
    with pytest.raises(ConfigError, match="share the name"):
        candidate_specs(["default", "default"])


def test_a_grid_file_expands_every_combination_and_lays_candidates_over_the_base(tmp_path: Path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base: default\n"
        "grid:\n  name: 'z{detector.params.zscale}-a{postprocess.average}'\n"
        "  vary: {detector.params.zscale: [3.0, 4.5], postprocess.average: [10, 20]}\n"
        "candidates:\n  - {name: quiet, postprocess: {suppress_rows: 7}}\n"
    )
    specs = {s.name: s for s in grid_specs(grid)}
    assert list(specs) == ["z3-a10", "z3-a20", "z4.5-a10", "z4.5-a20", "quiet"]
    assert specs["z4.5-a10"].detector.params == {"zscale": 4.5}
    assert specs["z4.5-a10"].postprocess.average == 10
    assert specs["z4.5-a10"].postprocess.suppress_rows == DEFAULT_SPEC.postprocess.suppress_rows
    assert specs["quiet"].postprocess.suppress_rows == 7 and specs["quiet"].detector == DEFAULT_SPEC.detector
    grid.write_text("grid: {vary: {postprocess.nope.x: [1]}}\n")
    with pytest.raises(ConfigError, match="not in the spec"):
        grid_specs(grid)
    grid.write_text("grid: {vary: {postprocess.nope: [1]}}\n")
    with pytest.raises(SpecError, match="nope"):
        grid_specs(grid)


def app() -> typer.Typer:
    root = typer.Typer()
    commands.register(root)
    root.command("noop")(lambda: None)
    return root


def test_nab_run_cv_prints_the_table_and_logs_per_category_scores(
    corpus: NabCorpus, tmp_path: Path, home: Path
) -> None:
    first = tmp_path / "first.yaml"
    first.write_text("name: first\npostprocess: {suppress_rows: 10}\n")
    second = tmp_path / "second.yaml"
    second.write_text("name: second\npostprocess: {average: 5}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["nab", "run", "--corpus", str(corpus.root), "--out", str(tmp_path / "out"), "--cv"]
    args += ["--detector", str(first), "--detector", str(second), "--tracking-uri", uri]
    result = CliRunner().invoke(app(), args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "cross-validated" in result.output and "[2/2] second" in result.output
    assert (tmp_path / "out" / "a" / "second_one.csv").is_file()

    import mlflow

    from engine.tracking.registry import use_tracking

    use_tracking(uri)
    runs = mlflow.search_runs(experiment_names=["nab"], output_format="list")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    for cat in ("a", "b", "c"):
        assert math.isfinite(metrics[f"cv.standard.{cat}.score"])
    assert "candidate.first.cv.standard" in metrics
    assert runs[0].data.params["candidates"] == "first,second"


def test_several_detectors_need_cv(corpus: NabCorpus, tmp_path: Path) -> None:
    args = ["nab", "run", "--corpus", str(corpus.root), "--out", str(tmp_path), "--no-mlflow"]
    result = CliRunner().invoke(app(), [*args, "--detector", "default", "--detector", "numenta-like"])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
