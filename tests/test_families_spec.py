"""The family comparison as a declared experiment: the shipped spec, validation, and the command."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine import cli
from engine.errors import SpecError
from engine.evaluation.families import DEFAULT_FAMILIES
from engine.evaluation.families_spec import DEFAULT_SPEC, load_comparison_spec


def test_shipped_spec_is_the_readme_comparison() -> None:
    spec = load_comparison_spec(DEFAULT_SPEC)
    assert [f.to_family() for f in spec.families] == list(DEFAULT_FAMILIES)
    assert spec.seeds == [1, 2, 3]


def test_every_problem_is_reported_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "days": -1,
                "holdout_fraction": 2,
                "famlies": [],
                "families": [{"label": "x", "detector": "IForest", "prams": {}}],
            }
        )
    )
    with pytest.raises(SpecError) as info:
        load_comparison_spec(bad)
    where = {(p.path, p.message) for p in info.value.problems}
    assert {"days", "holdout_fraction"} <= {path for path, _ in where}
    assert {("", "unknown key 'famlies'"), ("families[0]", "unknown key 'prams'")} <= where
    assert all(p.file == str(bad) for p in info.value.problems)


def test_unknown_detector_fails_at_load(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"families": [{"label": "x", "detector": "IForrest"}]}))
    with pytest.raises(SpecError) as info:
        load_comparison_spec(bad)
    assert [p.path for p in info.value.problems] == ["families[0].detector"]


def test_command_prints_the_per_kind_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "small.yaml"
    small.write_text(
        yaml.safe_dump(
            {
                "seeds": [8],
                "days": 3,
                "train_days": 1.5,
                "interval": "1m",
                "families": [
                    {"label": "IForest", "detector": "IForest", "params": {"n_estimators": 20}},
                    {
                        "label": "CUSUM",
                        "detector": "CUSUM",
                        "params": {"reference": 60},
                        "features": ["retrieval_*"],
                    },
                ],
            }
        )
    )
    with pytest.raises(SystemExit) as info:
        cli.main(["--home", str(tmp_path / "home"), "experiment", "families", str(small), "--no-mlflow"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| incident kind (n) | IForest | CUSUM |")
    assert "false alarms / day" in out


def test_family_params_and_interval_are_checked_at_load(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "interval": "banana",
                "families": [
                    {"label": "IForest", "detector": "IForest", "params": {"n_estimatorz": 20}},
                    {"label": "CUSUM", "detector": "CUSUM", "params": {"reference": 60}},
                    {"label": "HBOS", "detector": "HBOS", "params": {"n_bins": -3}},
                ],
            }
        )
    )
    with pytest.raises(SpecError) as info:
        load_comparison_spec(bad)
    problems = {p.path: p for p in info.value.problems}
    assert set(problems) == {"interval", "families[0].params.n_estimatorz", "families[2].params.n_bins"}
    assert "banana" in problems["interval"].message
    assert problems["families[0].params.n_estimatorz"].hint == "did you mean 'n_estimators'?"
    assert "-3" in problems["families[2].params.n_bins"].message
