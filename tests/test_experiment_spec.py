"""Experiment specs: validated at load, every problem at once with file, path and hint."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tracking_support import small_spec, write_spec

from engine.errors import SpecError
from engine.tracking.spec import load_spec, validate_spec

REPO = Path(__file__).resolve().parents[1]


def test_shipped_specs_validate_and_expand() -> None:
    specs = sorted((REPO / "experiments").glob("*.yaml"))
    assert len(specs) >= 2
    for path in specs:
        loaded = load_spec(path)
        assert loaded.spec.configs(), path
        assert loaded.feature_spec.feature_names


def test_grid_is_the_cartesian_product_with_fixed_params_merged() -> None:
    raw = small_spec(
        detectors=[
            {
                "class": "IForest",
                "params": {"contamination": 0.01},
                "grid": {"n_estimators": [10, 20], "max_features": [0.5, 0.8, 1.0]},
            },
            {"class": "HBOS"},
        ]
    )
    configs = validate_spec(raw).spec.configs()
    assert len(configs) == 7
    assert [c.index for c in configs] == list(range(7))
    assert configs[0].params == {"contamination": 0.01, "max_features": 0.5, "n_estimators": 10}
    assert configs[-1].detector == "HBOS" and configs[-1].params == {}
    assert configs[0].label == "IForest(contamination=0.01,max_features=0.5,n_estimators=10)"


def test_every_problem_is_reported_at_once_with_file_path_and_hint(tmp_path: Path) -> None:
    raw = small_spec(
        detectors=[{"class": "IForrest", "grid": {"n_estimators": []}}],
        threshold={"kind": "quantile", "q": 1.5},
        evaluation={"split": {"train_fraction": 0.5}, "metric": "f2"},
        features={**small_spec()["features"], "interval": "ten seconds"},
    )
    raw["dataa"] = {}
    path = write_spec(tmp_path / "broken.yaml", raw)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    problems = {p.path: p for p in info.value.problems}
    text = str(info.value)
    assert all(p.file == str(path) for p in info.value.problems)
    assert problems[""].message == "unknown key 'dataa'" and problems[""].hint == "did you mean 'data'?"
    assert "threshold.q" in problems
    assert "choose one of f1" in problems["evaluation.metric"].message
    assert "detectors[0].grid" in problems
    assert problems["detectors[0].class"].hint == "did you mean 'IForest'?"
    assert any(p.startswith("features.interval") for p in problems), text
    assert len(info.value.problems) >= 6


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndetectors: [\n  - {class: HBOS\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.problems[0].path.startswith("line ")


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


def test_data_and_split_rules() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(
            small_spec(
                data={"last_days": 2, "start": "2026-01-01T00:00:00", "query": "DELETE FROM telemetry"},
                evaluation={"split": {"train_fraction": 0.5, "test_start": "2026-01-02T00:00:00"}},
            )
        )
    messages = " | ".join(p.message for p in info.value.problems)
    assert "either last_days or start/end" in messages or "SELECT" in messages
    assert "exactly one of train_fraction or test_start" in messages


def test_evaluation_key_ignores_the_grid_but_not_the_data() -> None:
    a = validate_spec(small_spec())
    b = validate_spec(small_spec(name="other", detectors=[{"class": "IForest"}]))
    c = validate_spec(small_spec(data={"services": ["gateway"]}))
    assert a.evaluation_key == b.evaluation_key
    assert a.evaluation_key != c.evaluation_key


def _sweep_with(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    """A copy of the shipped PyOD sweep spec with textual edits (each must apply exactly once)."""
    text = (REPO / "experiments" / "synth_pyod_sweep.yaml").read_text()
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "synth_pyod_sweep.yaml"
    path.write_text(text)
    return path


def test_detector_params_are_checked_at_load_every_problem_once(tmp_path: Path) -> None:
    path = _sweep_with(
        tmp_path,
        ("n_estimators: [50, 100, 200]", "n_estimatorz: [50, 100, 200]"),
        ("  - class: IForest\n", "  - class: IForest\n    params: {contamination: 0.9}\n"),
        ("n_bins: [10, 20, 40]", "n_bins: [10, -3, 40]"),
    )
    with pytest.raises(SpecError) as info:
        load_spec(path)
    problems = {p.path: p for p in info.value.problems}
    assert set(problems) == {
        "detectors[0].grid.n_estimatorz",
        "detectors[0].params.contamination",
        "detectors[1].grid.n_bins[1]",
    }, str(info.value)
    assert len(info.value.problems) == 3  # two configurations share the typo: reported once
    assert problems["detectors[0].grid.n_estimatorz"].hint == "did you mean 'n_estimators'?"
    assert "0.9" in problems["detectors[0].params.contamination"].message
    assert "-3" in problems["detectors[1].grid.n_bins[1]"].message
    assert all(p.file == str(path) for p in info.value.problems)


def test_own_detector_params_are_checked_at_load() -> None:
    raw = small_spec(detectors=[{"class": "KMeansDistance", "grid": {"n_cluster": [4]}}])
    with pytest.raises(SpecError) as info:
        validate_spec(raw, file="kmeans.yaml")
    [problem] = info.value.problems
    assert problem.path == "detectors[0].grid.n_cluster"
    assert problem.hint == "did you mean 'n_clusters'?"


def test_a_stateful_detector_is_refused_in_the_shared_model_slot() -> None:
    """A forecaster keeps state between rows; fitted once and shared by every service of a group it
    would mix their series, so the spec is refused at load, naming file and field."""
    raw = small_spec(detectors=[{"class": "HBOS"}, {"class": "SeasonalResidual", "params": {"season": 60}}])
    with pytest.raises(SpecError) as info:
        validate_spec(raw, file="forecast.yaml")
    [problem] = info.value.problems
    assert (problem.file, problem.path) == ("forecast.yaml", "detectors[1].class")
    assert "keeps state between rows" in problem.message and "stateless" in problem.hint


def test_experiment_validate_command_fails_on_a_misspelt_param(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine import cli

    path = _sweep_with(tmp_path, ("n_estimators: [50, 100, 200]", "n_estimatorz: [50, 100, 200]"))
    with pytest.raises(SystemExit) as info:
        cli.main(["--home", str(tmp_path / "home"), "experiment", "validate", str(path)])
    captured = capsys.readouterr()
    assert info.value.code == 2
    assert "ok (" not in captured.out
    assert "detectors[0].grid.n_estimatorz" in captured.err
    assert "did you mean 'n_estimators'?" in captured.err


def test_evaluate_help_example_uses_parameters_the_notebook_declares(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The example `-p NAME VALUE` pairs of `selfheal evaluate --help` must exist in the notebook."""
    import json
    import re

    from engine import cli

    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    example = re.search(r"Example: selfheal evaluate (\S+\.ipynb)(.*)", help_text)
    assert example, help_text
    names = re.findall(r"-p (\w+) ", example.group(2))
    assert names
    notebook = json.loads((REPO / example.group(1)).read_text())
    [cell] = [c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    declared = set(re.findall(r"^(\w+)\s*=", "".join(cell["source"]), flags=re.M))
    assert set(names) <= declared, (names, declared)
