"""The operator commands against a running engine: approvals list|approve|reject, pause, resume, journal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from test_runtime_support import (
    T0,
    TOKEN,
    AdminServer,
    fit_pipeline,
    ndjson,
    service_points,
    wait_for,
    write_rules,
)
from typer.testing import CliRunner

from engine.runtime.commands import register
from engine.runtime.components import assemble
from engine.runtime.config import load_settings
from engine.runtime.server import RunningEngine, build_engine, serve_in_thread


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[RunningEngine, AdminServer, Path]]:
    with AdminServer() as admin:
        rules = write_rules(tmp_path / "rules", admin.url)
        settings = load_settings(
            overrides={
                "port": 0,
                "token": TOKEN,
                "tick_s": 0.01,
                "verify_interval_s": 0.05,
                "approver_tokens": {"alice": "alice-token-5678"},
            },
            environ={},
        )
        server = serve_in_thread(
            build_engine(assemble(fit_pipeline(), rules), settings, tmp_path / "journals")
        )
        try:
            yield server, admin, tmp_path / "journals" / "engine.sqlite"
        finally:
            server.stop()


def _push(url: str, t: float, seconds: int, **anomalous: bool) -> None:
    assert httpx.post(
        f"{url}/v1/telemetry", content=ndjson(list(service_points(t, seconds, **anomalous)))
    ).is_success


def test_approvals_commands_list_approve_and_reject(
    running: tuple[RunningEngine, AdminServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, admin, journal = running
    cli = CliRunner()
    app = _app()
    base = ["--url", server.url]
    _push(server.url, T0, 3)
    _push(server.url, T0 + 3, 2, vector_db=True)
    wait_for(lambda: httpx.get(f"{server.url}/v1/approvals").json())
    listed = cli.invoke(app, ["approvals", "list", *base, "--json"])
    assert listed.exit_code == 0, listed.output
    (pending,) = json.loads(listed.output)
    human = cli.invoke(app, ["approvals", "list", *base])
    assert pending["id"] in human.output and "rollback_model on vector-db" in human.output

    monkeypatch.delenv("SELFHEAL_ENGINE_TOKEN", raising=False)
    refused = cli.invoke(app, ["approvals", "approve", pending["id"], *base])
    assert refused.exit_code != 0 and "missing bearer token" in str(refused.exception)

    approved = cli.invoke(
        app, ["approvals", "approve", pending["id"], *base, "--token", "alice-token-5678", "--reason", "go"]
    )
    assert approved.exit_code == 0, approved.output
    assert f"{pending['id']} approved by alice" in approved.output
    wait_for(lambda: admin.calls("/admin/rollback_model"))

    shown = cli.invoke(app, ["journal", "--journal", str(journal), "--kind", "approvals", "--json"])
    (row,) = [json.loads(line) for line in shown.output.splitlines()]
    assert (row["status"], row["approver"], row["reason"]) == ("approved", "alice", "go")

    missing_reason = cli.invoke(app, ["approvals", "reject", "apr-x", *base, "--token", TOKEN])
    assert missing_reason.exit_code != 0  # --reason is required
    unknown = cli.invoke(app, ["approvals", "reject", "apr-x", *base, "--token", TOKEN, "--reason", "no"])
    assert "no approval request apr-x" in str(unknown.exception)


def test_pause_resume_and_journal_filters(running: tuple[RunningEngine, AdminServer, Path]) -> None:
    server, admin, journal = running
    cli = CliRunner()
    app = _app()
    paused = cli.invoke(app, ["pause", "--url", server.url, "--token", TOKEN, "--reason", "drill"])
    assert paused.exit_code == 0 and "paused" in paused.output
    _push(server.url, T0, 3)
    _push(server.url, T0 + 3, 4, inference_a=True)
    wait_for(lambda: "blocked" in cli.invoke(app, ["journal", "--journal", str(journal)]).output)
    assert admin.calls() == []
    out = cli.invoke(app, ["journal", "--journal", str(journal), "--service", "inference-a", "--since", "1h"])
    assert "kill_switch" in out.output and "restart on inference-a" in out.output
    assert "bundle dev" in out.output and "detector IForest@dev" in out.output
    none = cli.invoke(app, ["journal", "--journal", str(journal), "--service", "vector-db"])
    assert none.output.strip() == "no decisions match"
    events = cli.invoke(
        app, ["journal", "--journal", str(journal), "--kind", "events", "--status", "anomaly"]
    )
    assert "inference-a  score" in events.output
    bad = cli.invoke(app, ["journal", "--journal", str(journal), "--since", "last tuesday"])
    assert bad.exit_code != 0 and "neither a duration nor a time" in str(bad.exception)
    resumed = cli.invoke(app, ["resume", "--url", server.url, "--token", "alice-token-5678"])
    assert resumed.exit_code == 0
    assert httpx.get(f"{server.url}/v1/status").json()["paused"] is False
    history = cli.invoke(app, ["journal", "--journal", str(journal), "--kind", "control"])
    lines = history.output.splitlines()
    assert len(lines) == 2, history.output  # newest first: every change is kept, not only the last
    assert "paused = false  by alice" in lines[0] and "reason" not in lines[0]
    assert "paused = true  by token  reason: drill" in lines[1]
    no_service = cli.invoke(
        app, ["journal", "--journal", str(journal), "--kind", "control", "--service", "x"]
    )
    assert no_service.exit_code != 0 and "have no service" in str(no_service.exception)


def test_journal_since_takes_compound_durations_and_iso_times(tmp_path: Path) -> None:
    from engine.runtime.journal import Journal

    path = tmp_path / "engine.sqlite"
    record = {
        "id": "dec-1",
        "event_id": "evt-1",
        "service": "gateway",
        "target": "gateway",
        "action": "restart",
        "params": {},
        "policy": "platform",
        "rule": "r",
    }
    with Journal(path) as j:
        j.record_decision(record, status="blocked", reason="kill_switch: drill")
    cli = CliRunner()
    for since, shown in (("1h30m", True), ("90m", True), ("2000-01-01T00:00", True), ("2099-01-01", False)):
        out = cli.invoke(_app(), ["journal", "--journal", str(path), "--since", since])
        assert out.exit_code == 0, (since, out.output, out.exception)
        assert ("restart on gateway" in out.output) is shown, since


def test_every_command_has_an_example() -> None:
    from typer.main import get_command

    root: Any = get_command(_app())
    names = []
    for name, cmd in root.commands.items():
        subs = getattr(cmd, "commands", None)
        if name == "journal":  # a command with subcommands: both have examples
            assert "Example:" in (cmd.help or ""), name
            names.append(name)
        for sub_name, sub in (subs or {name: cmd}).items():
            names.append(sub_name)
            assert "Example:" in (sub.help or ""), sub_name
    expected = ["approve", "export", "journal", "label", "list", "pause", "reject", "resume", "run"]
    assert sorted(names) == expected
