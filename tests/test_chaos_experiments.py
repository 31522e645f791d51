"""Chaos experiment files: every shipped one is valid; mistakes are reported all at once, precisely."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from engine.chaos.commands import register
from engine.chaos.experiment import load_experiment
from engine.errors import SpecError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "chaos"
KINDS = {"latency_creep", "memory_leak", "stale_index", "bad_deploy", "dependency_outage"}


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_experiment_is_valid(path: Path) -> None:
    exp = load_experiment(path)
    assert exp.expect, "an experiment must say what remediation it expects"
    names = {f.name for f in exp.faults}
    assert {e.fault for e in exp.expect} <= names


def test_one_experiment_per_incident_kind_and_a_game_day() -> None:
    single = {}
    for path in EXPERIMENTS.glob("*.yaml"):
        exp = load_experiment(path)
        if len(exp.faults) == 1:
            single.setdefault(exp.kinds[0], []).append(path.stem)
    assert set(single) == KINDS
    game_day = load_experiment(EXPERIMENTS / "game_day.yaml")
    assert len(game_day.kinds) >= 3


def test_the_outage_experiment_forbids_touching_the_victims() -> None:
    exp = load_experiment(EXPERIMENTS / "dependency_outage.yaml")
    assert not exp.allow_unexpected_actions
    assert [(e.action, e.service) for e in exp.expect] == [("restart", "vector-db")]


def test_the_bad_deploy_experiments_approve_and_let_expire() -> None:
    approved = load_experiment(EXPERIMENTS / "bad_deploy.yaml")
    expired = load_experiment(EXPERIMENTS / "bad_deploy_expired.yaml")
    assert [a.decide for a in approved.approvals] == ["approve"] and approved.expect[0].approval == "approved"
    assert [a.decide for a in expired.approvals] == ["ignore"]
    assert expired.expect[0].approval == "expired" and not expired.expect[0].executed


BROKEN = """
title: broken on purpose
steady_state_hypothesis:
  title: t
  probes:
    - {name: p, service: gateway, metric: retrieval_precision, tolerance: {max: 1}}
method:
  - fault: {name: f, kind: stale_index, servce: vector-db}
  - pause: 5m
expect:
  - {fault: leek, action: restart, service: vector-db}
"""


def test_three_mistakes_give_three_precise_problems(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    problems = {(p.path, p.message): p.hint for p in err.value.problems}
    paths = [p.path for p in err.value.problems]
    assert "steady_state_hypothesis.probes[0]" in paths  # gateway emits no retrieval_precision
    assert any("gateway does not emit retrieval_precision" in m for _, m in problems)
    assert problems[("method[0].fault", "unknown key 'servce'")] == "did you mean 'service'?"
    assert not any("missing" in m or "pause" in m for _, m in problems)  # the misspelling stands for it
    assert all(p.file == str(path) for p in err.value.problems)


def test_cross_references_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "refs.yaml"
    path.write_text(BROKEN.replace("servce", "service").replace("retrieval_precision", "error_rate"))
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    (problem,) = err.value.problems
    assert problem.path == "expect[0].fault" and "no fault named 'leek'" in problem.message


def test_chaos_validate_and_list_commands(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)  # the root CLI does the same once engine.chaos.commands is in COMMAND_MODULES
    runner = CliRunner()
    ok = runner.invoke(app, ["chaos", "validate"])
    assert ok.exit_code == 0, ok.output
    assert "game_day.yaml" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    failed = runner.invoke(app, ["chaos", "validate", str(bad), str(EXPERIMENTS / "memory_leak.yaml")])
    assert isinstance(failed.exception, SpecError)  # engine.cli.main turns it into exit code 2
    assert len(failed.exception.problems) == 2 and "ok  " in failed.output
    listed = runner.invoke(app, ["chaos", "list"])
    assert listed.exit_code == 0 and "dependency_outage" in listed.output
    for command in (
        ["chaos", "run"],
        ["chaos", "validate"],
        ["chaos", "list"],
        ["chaos", "platform"],
        ["replay"],
    ):
        assert "Example:" in runner.invoke(app, [*command, "--help"]).output


def test_the_hosted_engine_logs_to_the_run_folder_not_the_terminal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`selfheal demo` printed the game day engine's 'not verified' warnings among its progress."""
    import logging

    from engine.chaos.runner import _engine_log

    log = logging.getLogger("engine.runtime.supervisor")
    with caplog.at_level("INFO"), _engine_log(tmp_path / "run" / "engine.log"):
        log.warning("restart on gateway not verified")
    assert "restart on gateway not verified" in (tmp_path / "run" / "engine.log").read_text()
    assert not [r for r in caplog.records if "not verified" in r.getMessage()]
    with caplog.at_level("INFO"):
        log.warning("after the run")  # the engine's loggers are as they were
    assert [r.getMessage() for r in caplog.records] == ["after the run"]
