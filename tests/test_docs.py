"""Docs that are tested: every CLI command and every action appears in the README."""

from __future__ import annotations

from conftest import REPO
from typer.main import get_command

from engine import cli


def _command_paths() -> list[str]:
    paths: list[str] = []

    def walk(cmd, prefix):  # type: ignore[no-untyped-def]
        sub = getattr(cmd, "commands", None)
        if sub:
            for name, child in sub.items():
                walk(child, [*prefix, name])
        else:
            paths.append(" ".join(prefix))

    walk(get_command(cli.app), [])
    return paths


def test_every_command_is_documented_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [p for p in _command_paths() if f"selfheal {p}" not in readme]
    assert missing == [], f"commands missing from README.md: {missing}"


def test_readme_names_the_two_setup_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [
        line.strip() for line in ci if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))
    ]
    assert commands == ["make test"]
