"""The CLI boundary: our errors become one line and exit code 2; every command has --help."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.main import get_command

from engine import cli
from engine.errors import EngineError


def _all_commands() -> list[list[str]]:
    root = get_command(cli.app)
    found: list[list[str]] = []

    def walk(cmd, path):  # type: ignore[no-untyped-def]
        sub = getattr(cmd, "commands", None)
        if sub:
            for name, child in sub.items():
                walk(child, [*path, name])
        else:
            found.append(path)

    walk(root, [])
    return found


def test_every_command_has_help_with_an_example() -> None:
    commands = _all_commands()
    assert commands, "no commands registered"
    for path in commands:
        result = subprocess.run(
            [sys.executable, "-m", "engine.cli", *path, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0, (path, result.stderr)
        assert "Example" in result.stdout, f"`selfheal {' '.join(path)} --help` shows no example"


def test_engine_error_becomes_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    def boom() -> None:
        raise EngineError("the thing is broken", hint="run the fixer")

    monkeypatch.setattr(cli, "app", typer.Typer())
    cli.app.command("boom")(boom)
    cli.app.command("other")(lambda: None)
    with pytest.raises(SystemExit) as info:
        cli.main(["boom"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["selfheal: error: the thing is broken (hint: run the fixer)"]


def test_version() -> None:
    result = subprocess.run([sys.executable, "-m", "engine.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("selfheal ")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["synth", "--seed", "abc"], "Invalid value for '--seed'"),
        (["ingest", "--bogus", "x"], "No such option: --bogus"),
        (["no-such-command"], "No such command"),
    ],
)
def test_usage_errors_are_one_message_not_a_traceback(argv: list[str], needle: str) -> None:
    result = subprocess.run([sys.executable, "-m", "engine.cli", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
