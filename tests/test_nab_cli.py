"""`selfheal nab score` and `selfheal nab run` end to end (MLflow on SQLite in tmp_path)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import typer
from test_streaming import tiny_corpus
from typer.testing import CliRunner

from engine.errors import ConfigError, EvaluationError
from engine.evaluation import commands


def app() -> typer.Typer:
    """Our command group on a bare root, so these tests do not depend on other command modules."""
    root = typer.Typer()
    commands.register(root)
    root.command("noop")(lambda: None)  # keeps `nab` a sub-group, as under the real root
    return root


def invoke(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app(), list(args))
    return result.exit_code, result.output, result.exception


def test_nab_run_writes_results_prints_scores_and_logs_to_mlflow(tmp_path: Path, home: Path) -> None:
    corpus = tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "results"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, output, exc = invoke(
        "nab", "run", "--corpus", str(corpus), "--out", str(out), "--tracking-uri", uri
    )
    assert code == 0, (output, exc)
    assert (out / "alpha" / "selfheal_shift.csv").is_file()
    assert "points/s" in output and "standard" in output and "alpha" in output and "MLflow run" in output

    import mlflow

    from engine.tracking.registry import use_tracking

    use_tracking(uri)
    runs = mlflow.search_runs(experiment_names=["nab"], output_format="list")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert 0 <= metrics["standard.score"] <= 100
    assert metrics["points"] == 700 + 650 + 600
    assert runs[0].data.params["detector.name"] == "NabZScore"

    # the written folder scores the same through `nab score`
    code, scored, exc = invoke("nab", "score", "--corpus", str(corpus), "--results", str(out), "--json")
    assert code == 0, (scored, exc)
    assert json.loads(scored)["standard.score"] == pytest.approx(metrics["standard.score"], abs=1e-9)


def test_nab_run_takes_a_spec_file_and_category_filter(tmp_path: Path, home: Path) -> None:
    corpus = tiny_corpus(tmp_path / "corpus")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: tiny\nrefit: {every: 5, window: 40}\n")
    out = tmp_path / "results"
    code, output, exc = invoke(
        "nab", "run", "--corpus", str(corpus), "--out", str(out), "--detector", str(spec),
        "--category", "alpha", "--no-mlflow",
    )  # fmt: skip
    assert code == 0, (output, exc)
    assert (out / "alpha" / "tiny_spike.csv").is_file()
    assert not (out / "beta").exists()
    assert not (home / "mlflow.db").exists()


def test_nab_score_errors_are_ours(tmp_path: Path) -> None:
    corpus = tiny_corpus(tmp_path / "corpus")
    code, _, exc = invoke("nab", "score", "--corpus", str(corpus), "--results", str(corpus))
    assert code != 0 and isinstance(exc, EvaluationError)
    code, _, exc = invoke(
        "nab", "score", "--corpus", str(corpus), "--results", str(corpus), "--threshold", "x"
    )
    assert code != 0 and isinstance(exc, (ConfigError, EvaluationError))


def test_nab_score_reproduces_the_reference_at_published_thresholds(nab_corpus: Path) -> None:
    code, output, exc = invoke(
        "nab", "score", "--corpus", str(nab_corpus), "--results", str(nab_corpus / "reference" / "numenta"),
        "--threshold", "standard=0.5421876907348634", "--threshold", "reward_low_FP_rate=0.5751955032348636",
        "--threshold", "reward_low_FN_rate=0.5421876907348634",
    )  # fmt: skip
    assert code == 0, (output, exc)
    lines = {line.split()[0]: line.split() for line in output.splitlines() if line.strip()}
    assert lines["standard"][1] == "70.2396"
    assert lines["reward_low_FP_rate"][1] == "63.4392"
    assert lines["reward_low_FN_rate"][1] == "74.3626"
    assert "realTweets" in lines


def _disorder(corpus: Path) -> None:
    """As in the real corpus: one row 55 minutes back (02:55 then 02:00), and one repeated time."""
    path = corpus / "data" / "alpha" / "spike.csv"
    lines = path.read_text().splitlines()
    stamp, value = lines[200].split(",")
    back = (datetime.fromisoformat(stamp) - timedelta(minutes=55)).strftime("%Y-%m-%d %H:%M:%S")
    lines[200] = f"{back},{value}"
    lines[300] = f"{lines[299].split(',')[0]},{lines[300].split(',')[1]}"
    path.write_text("\n".join(lines) + "\n")


def test_nab_run_and_score_take_rows_that_go_back_in_time_or_repeat(tmp_path: Path, home: Path) -> None:
    """Issue 15: one real NAB file goes back 55 minutes; both commands stopped and scored nothing."""
    corpus = tiny_corpus(tmp_path / "corpus")
    _disorder(corpus)
    out = tmp_path / "results"
    args = ["nab", "run", "--corpus", str(corpus), "--out", str(out), "--no-mlflow"]
    result = CliRunner().invoke(app(), args)
    assert result.exit_code == 0, result.output
    note = "1 row(s) whose timestamp goes backwards and 1 with a repeated timestamp, in 1 file(s)"
    assert note in result.stderr
    rows = sum(len(p.read_text().splitlines()) - 1 for p in out.rglob("*.csv"))
    assert rows == 700 + 650 + 600  # one score per data row, the odd rows included
    args = ["nab", "score", "--corpus", str(corpus), "--results", str(out), "--json"]
    result = CliRunner().invoke(app(), args)
    assert result.exit_code == 0, result.output
    assert note in result.stderr
    assert math.isfinite(json.loads(result.stdout)["standard.score"])
