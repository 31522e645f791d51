"""The CLI boundary: our errors become one line and exit code 2; every command has --help."""

from __future__ import annotations

import inspect
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import typer
from test_runtime_support import AdminServer, push_anomaly, serving, wait_for, write_rules
from typer.main import get_command
from typer.testing import CliRunner

from engine import cli
from engine.errors import EngineError

TESTS = Path(__file__).resolve().parent


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


# ------------------------------------------------------------------ a new user's first hour (issue 17)


def _env(**extra: str) -> dict[str, str]:
    """This environment without the selfheal and MLflow settings a developer's shell may carry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "MLFLOW_"))}
    return {**env, **extra}


def _selfheal(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env or _env(),
    )


def test_a_bad_engine_setting_names_where_its_value_came_from(tmp_path: Path) -> None:
    from_env = _selfheal("run", str(tmp_path), env=_env(SELFHEAL_ENGINE_TOKEN="s3cret"))
    assert from_env.returncode == 2
    assert "environment variable SELFHEAL_ENGINE_TOKEN: token: the token must have at least 8" in (
        from_env.stderr
    )
    config = tmp_path / "engine.yaml"
    config.write_text("token: short\n")
    # SELFHEAL_ENGINE_URL is the operator commands' variable, not a setting the engine refuses
    from_file = _selfheal("run", str(config), env=_env(SELFHEAL_ENGINE_URL="http://127.0.0.1:9"))
    assert from_file.returncode == 2
    assert from_file.stderr.startswith("selfheal: error: 1 problem(s):"), from_file.stderr
    assert f"{config}: token: the token must have at least 8" in from_file.stderr
    from_option = _selfheal("run", str(tmp_path), "--port", "70000")
    assert from_option.returncode == 2 and "option --port: port:" in from_option.stderr


def test_run_on_a_missing_path_says_it_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "bundle"
    result = _selfheal("--home", str(tmp_path / "home"), "run", str(missing))
    assert result.returncode == 2
    assert f"selfheal: error: {missing} does not exist" in result.stderr
    assert "no loader knows" not in result.stderr


def _description(text: str) -> list[list[str]]:
    """The prose paragraphs of a help page: after the usage line, before the first section title."""
    paragraphs: list[list[str]] = [[]]
    for line in text.splitlines()[1:]:
        if line and not line.startswith(" "):  # Arguments:, Options:, Commands:
            break
        if line.strip():
            paragraphs[-1].append(line.rstrip())
        elif paragraphs[-1]:
            paragraphs.append([])
    return [p for p in paragraphs if p]


@pytest.mark.parametrize("path", _all_commands(), ids=" ".join)
def test_help_breaks_lines_between_sentences_only_and_keeps_examples_whole(path: list[str]) -> None:
    width = 80
    shown = CliRunner().invoke(cli.app, [*path, "--help"], terminal_width=width)
    assert shown.exit_code == 0, shown.output
    for paragraph in _description(shown.output):
        if paragraph[0].lstrip().startswith("Example"):
            continue
        for line, following in itertools.pairwise(paragraph):
            word = following.split()[0]
            assert len(line) + 1 + len(word) > width, f"line broken early before {word!r}:\n{line}"
    command = get_command(cli.app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    lines = [line.strip() for line in shown.output.splitlines()]
    for example in (p for p in inspect.cleandoc(command.help or "").split("\n\n") if "Example" in p):
        for line in example.replace("\b\n", "").splitlines():
            assert line.strip() in lines, f"example cut by the help formatter: {line}"


def test_rule_names_print_once(tmp_path: Path) -> None:
    with AdminServer() as admin, serving(write_rules(tmp_path / "rules", admin.url), tmp_path) as running:
        push_anomaly(running.url, vector_db=True)
        wait_for(lambda: httpx.get(f"{running.url}/v1/approvals").json())
        listed = CliRunner().invoke(cli.app, ["approvals", "list", "--url", running.url])
    journal = CliRunner().invoke(cli.app, ["journal", "--journal", str(tmp_path / "engine.sqlite")])
    assert "rule platform/rollback-vector-db)" in listed.output, listed.output
    assert "  platform/rollback-vector-db v7+" in journal.output, journal.output
    assert "platform/platform/" not in listed.output + journal.output


class _Lines:
    """The stderr lines of a running process, collected by a thread (readline would block)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr
        threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True).start()

    def wait_for(self, needle: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if needle in line]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} in:\n{''.join(self.lines)}")


def test_engine_logs_its_normal_events_at_info_and_a_busy_port_leaves_no_journal(tmp_path: Path) -> None:
    factory = f"{TESTS / 'test_runtime_support.py'}:build_components"
    env = _env(SELFHEAL_TEST_RULES=str(write_rules(tmp_path / "rules", "http://127.0.0.1:9")))
    journal = tmp_path / "journal" / "engine.sqlite"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused = _selfheal("--home", str(tmp_path), "run", factory, "--port", str(port),
                            "--journal", str(journal), env=env)  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in refused.stderr
    assert not journal.parent.exists() or list(journal.parent.iterdir()) == []

    for start in ("first", "again"):  # again: the journal exists, the engine recovers from it
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "--home", str(tmp_path), "run", factory, "--port", "0",
             "--journal", str(journal)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        stderr = _Lines(proc)
        try:
            line = stderr.wait_for("listening on")
            assert " INFO engine.runtime.server: selfheal engine listening on http://127.0.0.1:" in line
            url = line.rsplit(" ", 1)[-1].strip()
            assert not url.endswith(":8787")  # --port 0 is a port (it was dropped as falsy)
            assert httpx.get(f"{url}/healthz").is_success
            push_anomaly(url, vector_db=start == "first")
            if start == "again":
                stderr.wait_for("recovered from the journal")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        stderr.wait_for("engine stopped")
        normal = [x for x in stderr.lines if " WARNING " in x or " ERROR " in x]
        assert normal == [], f"{start} start: {stderr.lines}"


@pytest.mark.slow
def test_hints_after_a_sweep_run_verbatim_and_stderr_carries_no_library_noise(tmp_path: Path) -> None:
    from conftest import REPO
    from test_tracking_support import make_home, small_spec, write_spec

    home = make_home(tmp_path / "my home", days=2)  # a space: the hint must quote the path
    spec = write_spec(
        tmp_path / "s.yaml", small_spec(detectors=[{"class": "HBOS"}], tracking={"model_name": "my-detector"})
    )
    swept = _selfheal("--home", str(home.root), "experiment", "run", str(spec), "--workers", "1")
    assert swept.returncode == 0, swept.stderr[-3000:]
    (hint,) = [line.removeprefix("next: ") for line in swept.stdout.splitlines() if line.startswith("next: ")]
    assert f"--home '{home.root}' promote " in hint and hint.endswith(" --name my-detector")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    promoted = subprocess.run(["bash", "-c", hint], capture_output=True, text=True, cwd=elsewhere, env=_env())
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert "PROMOTED: my-detector version 1" in promoted.stdout

    listed = _selfheal("--home", str(home.root), "models", "list", "my-detector")
    header = listed.stdout.splitlines()[0].split()
    assert header[2:8] == ["f1", "precision", "recall", "false_alarms_per_day", "nab_score", "gate"], header
    built = _selfheal("--home", str(home.root), "bundle", "build", "--model", "models:/my-detector@champion",
                      "--rules", str(REPO / "rules"))  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    for noise in ("INFO mlflow", "Downloading artifacts", "Creating initial MLflow database"):
        assert noise not in swept.stderr + promoted.stderr + built.stderr


@pytest.mark.slow
def test_a_hint_to_create_data_runs_verbatim_into_the_same_home(tmp_path: Path) -> None:
    from test_tracking_support import small_spec, write_spec

    home = tmp_path / "their home"
    spec = write_spec(tmp_path / "spec.yaml", small_spec())
    refused = _selfheal("--home", str(home), "experiment", "run", str(spec), "--workers", "1")
    assert refused.returncode == 2
    hint = re.search(r"hint: create data first: (.+?), or ingest", refused.stderr)
    assert hint, refused.stderr
    filled = subprocess.run(["bash", "-c", hint.group(1)], capture_output=True, text=True, env=_env())
    assert filled.returncode == 0, filled.stderr
    assert (home / "telemetry.duckdb").is_file()  # the home the failing command was given
