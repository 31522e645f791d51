"""CLI commands of the engine: run, pause, resume, approvals list|approve|reject, journal [label|export]."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.cliutil import home_of
from engine.durations import since_ts
from engine.errors import ConfigError

UrlOpt = Annotated[
    str | None, typer.Option("--url", help="Engine URL (default $SELFHEAL_ENGINE_URL or :8787).")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="Engine token (default $SELFHEAL_ENGINE_TOKEN).", show_default=False),
]


def register(app: typer.Typer) -> None:
    """Add the engine's commands to the root app."""
    app.command("run")(run)
    app.command("pause")(pause)
    app.command("resume")(resume)
    journal_app = typer.Typer(invoke_without_command=True)
    journal_app.callback()(journal)
    journal_app.command("label")(journal_label)
    journal_app.command("export")(journal_export)
    app.add_typer(journal_app, name="journal")
    approvals = typer.Typer(help="High-risk actions waiting for a human.", no_args_is_help=True)
    approvals.command("list")(approvals_list)
    approvals.command("approve")(approvals_approve)
    approvals.command("reject")(approvals_reject)
    app.add_typer(approvals, name="approvals")


def run(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(help="A bundle directory, an engine config (.yaml), or file.py:function.")
    ],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Engine config (YAML).")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8787).")] = None,
    journal_path: Annotated[
        str | None, typer.Option("--journal", help="Journal: a SQLite file or a postgresql:// URL.")
    ] = None,
    trusted_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--trusted-key",
            help="Public key (KEY.pub) or folder of them a bundle may be signed with; repeatable. "
            "HOME/keys/trusted/, SELFHEAL_TRUSTED_KEYS and the trusted_keys setting are trusted too.",
        ),
    ] = None,
    allow_unsigned: Annotated[
        bool,
        typer.Option(
            "--allow-unsigned", help="Local development only: run an unsigned or untrusted bundle (warns)."
        ),
    ] = False,
) -> None:
    """Run the engine: ingest telemetry, score, decide, act, verify, journal. Stops cleanly on SIGTERM.

    Settings come from the config file, then SELFHEAL_ENGINE_<SETTING> variables (the token is
    usually SELFHEAL_ENGINE_TOKEN), then these options. Log as JSON with `selfheal --json-logs run`.

    Example: SELFHEAL_ENGINE_TOKEN=change-me-0123 selfheal run .selfheal/bundles/selfheal-detector-v1
    """
    from engine.runtime.components import load_components
    from engine.runtime.config import load_settings
    from engine.runtime.server import build_engine, listen, serve

    home = home_of(ctx).ensure()
    if ref.endswith((".yaml", ".yml")) and Path(ref).is_file():
        if config is not None:
            raise ConfigError(f"{ref} is already a config; --config {config} would be a second one")
        config, ref = Path(ref), ""
    overrides: dict[str, Any] = {
        k: v for k, v in (("host", host), ("port", port), ("journal", journal_path)) if v is not None
    }
    if allow_unsigned:  # only when given: a config's allow_unsigned is not overridden by the default
        overrides["allow_unsigned"] = True
    settings = load_settings(config, overrides=overrides)
    pinned = home.trusted_keys
    extra = [*(trusted_key or ()), *([pinned] if pinned.is_dir() else [])]
    if extra:
        settings = settings.model_copy(update={"trusted_keys": [*settings.trusted_keys, *extra]})
    if not ref:
        if not settings.components:
            raise ConfigError(
                f"{config}: no `components:` setting", hint="name a bundle directory or file.py:function"
            )
        ref = settings.components
        if (
            config is not None
            and not Path(ref).is_absolute()
            and (config.parent / ref.split(":")[0]).exists()
        ):
            ref = str(config.parent / ref)
    settings.require_safe_binding(str(config or "command line"))
    components = load_components(ref, settings)
    sock = listen(settings)
    try:
        engine = build_engine(components, settings, home.journals)
    except BaseException:
        sock.close()
        raise
    serve(engine, sock)


def pause(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(help="Why; recorded in the journal.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Kill switch: stop every action (detection and journaling go on) until `selfheal resume`.

    Example: selfheal pause --reason "incident bridge: humans in control"
    """
    from engine.runtime.client import EngineClient

    EngineClient(url, token).pause(reason)
    typer.echo("paused: no action will run until `selfheal resume`")


def resume(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(help="Why; recorded in the journal.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Lift the kill switch: actions run again (subject to every other safeguard).

    Example: selfheal resume --reason "incident closed"
    """
    from engine.runtime.client import EngineClient

    EngineClient(url, token).resume(reason)
    typer.echo("resumed")


def approvals_list(
    ctx: typer.Context,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List approval requests that are waiting, with their action, target and time left.

    Example: selfheal approvals list
    """
    from engine.runtime.client import EngineClient

    rows = EngineClient(url, token).approvals()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        typer.echo("no pending approvals")
        return
    now = time.time()
    for r in rows:
        left = max(0.0, r["expires_ts"] - now)
        typer.echo(
            f"{r['id']}  {r['action']} on {r['target']} (risk {r['risk']}, rule {r['rule']})  "
            f"params {json.dumps(r['params'])}  expires in {left:.0f}s"
        )


def approvals_approve(
    ctx: typer.Context,
    approval_id: Annotated[str, typer.Argument(help="Approval id from `selfheal approvals list`.")],
    reason: Annotated[str | None, typer.Option(help="Why; recorded with the approver.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Approve a waiting high-risk action; the engine runs it at once (after its safeguards).

    Example: selfheal approvals approve apr-01a24f25be831f2e3d4c5b6a7980 --reason "canary looks bad"
    """
    from engine.runtime.client import EngineClient

    row = EngineClient(url, token).approve(approval_id, reason)
    typer.echo(f"{row['id']} approved by {row['approver']}")


def approvals_reject(
    ctx: typer.Context,
    approval_id: Annotated[str, typer.Argument(help="Approval id from `selfheal approvals list`.")],
    reason: Annotated[str, typer.Option(help="Why (required); recorded with the approver.")],
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Reject a waiting high-risk action; it will not run.

    Example: selfheal approvals reject apr-01a24f25be831f2e3d4c5b6a7980 --reason "known issue, fix deploying"
    """
    from engine.runtime.client import EngineClient

    row = EngineClient(url, token).reject(approval_id, reason)
    typer.echo(f"{row['id']} rejected by {row['approver']}")


def journal(
    ctx: typer.Context,
    kind: Annotated[
        str,
        typer.Option(
            help="decisions, events, approvals, executions, verifications, control (every pause, "
            "resume and mode change, with who and why) or notifications (status pending, sent or dead)."
        ),
    ] = "decisions",
    service: Annotated[str | None, typer.Option(help="Only this service (or target).")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only newer rows: 30m, 2h, 1d or an ISO time (UTC).")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(help="Only this status (events: anomaly or health; control: its key, e.g. paused)."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows, newest first.")] = 50,
    journal_path: Annotated[
        str | None,
        typer.Option("--journal", help="Journal: SQLite file or postgresql:// URL (default in the home)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Show recent journal rows (readable while the engine runs); `label` and `export` below.

    Example: selfheal journal --service inference-a --since 2h --status verified

    Example: selfheal journal --kind control --since 1d
    """
    from engine.runtime.journal import Journal

    if ctx.invoked_subcommand is not None:
        return
    path = journal_path or home_of(ctx).journals / "engine.sqlite"
    with Journal(path, read_only=True) as j:
        rows = j.recent(kind, service=service, since=since_ts(since), status=status, limit=limit)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, default=str))
        return
    if not rows:
        typer.echo(f"no {kind} match")
        return
    for row in rows:
        typer.echo(_line(kind, row))


def journal_label(
    ctx: typer.Context,
    event_id: Annotated[str, typer.Argument(help="Anomaly event id, from `selfheal journal --kind events`.")],
    false_alarm: Annotated[
        bool, typer.Option("--false-alarm/--true-alarm", help="Nothing was wrong / something was.")
    ] = True,
    reason: Annotated[str | None, typer.Option(help="Why; recorded with your name.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Label an anomaly a false (or true) alarm, through the running engine; research reads the
    labels after `selfheal journal export --to-store` (the `alarm_labels` table).

    Example: selfheal journal label evt-01a24f25bd901a2b3c4d5e6f7a8b --false-alarm --reason "load test"
    """
    from engine.runtime.client import EngineClient

    row = EngineClient(url, token).label(event_id, "false_alarm" if false_alarm else "true_alarm", reason)
    typer.echo(f"{row['event_id']} labeled {row['label']} by {row['actor']}")


def journal_export(
    ctx: typer.Context,
    to_store: Annotated[
        bool, typer.Option("--to-store", help="Write the tables into the home's DuckDB store.")
    ] = False,
    journal_path: Annotated[
        str | None,
        typer.Option("--journal", help="Journal: SQLite file or postgresql:// URL (default in the home)."),
    ] = None,
) -> None:
    """The journal as evidence: one outcome per decision (healed, not_healed, rejected, expired...,
    with time to recover, detector and bundle versions, the event's window) and the alarms people
    labeled. --to-store writes them to the DuckDB store (tables `outcomes`, `alarm_labels`, view
    `outcome_telemetry`; notebook 04 reads them); without it, prints the per-policy summary.
    Readable while the engine runs; exporting again replaces rows by id.

    Example: selfheal journal export --to-store
    """
    from engine.runtime.journal import Journal
    from engine.runtime.outcomes import export_to_store, outcomes_frame, policy_effectiveness

    home = home_of(ctx)
    path = journal_path or home.journals / "engine.sqlite"
    if to_store:
        n_outcomes, n_labels = export_to_store(path, home.telemetry_db)
        typer.echo(f"{n_outcomes} outcome(s), {n_labels} alarm label(s): {path} -> {home.telemetry_db}")
        return
    with Journal(path, read_only=True) as j:
        table = policy_effectiveness(outcomes_frame(j))
    typer.echo(str(table) if table.height else f"no decisions in {path}")


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _line(kind: str, r: dict[str, Any]) -> str:
    if kind == "decisions":
        reason = f"  ({r['reason']})" if r.get("reason") else ""
        return (
            f"{_when(r['ts'])}  {r['id']}  {r['status']:<20} {r['action']} on {r['target']}  "
            f"risk {r['risk']}  {r['rule']} v{r['policy_version']}  "
            f"detector {r['detector']}@{r['detector_version']}  bundle {r['bundle_version']}{reason}"
        )
    if kind == "events":
        return (
            f"{_when(r['ts'])}  {r['id']}  {r['kind']:<8} {r['service']}  score {r['score']:.3f} "
            f"(threshold {r['threshold']:.3f})  window {_when(r['window_start'])} .. {_when(r['window_end'])}"
        )
    if kind == "approvals":
        return (
            f"{_when(r['created_ts'])}  {r['id']}  {r['status']:<9} decision {r['decision_id']}  "
            f"approver {r['approver'] or '-'}  reason {r['reason'] or '-'}  expires {_when(r['expires_ts'])}"
        )
    if kind == "control":
        why = f"  reason: {r['reason']}" if r.get("reason") else ""
        return f"{_when(r['ts'])}  {r['key']} = {json.dumps(r['value'])}  by {r['actor'] or '-'}{why}"
    if kind == "notifications":
        err = f"  error: {r['error']}" if r.get("error") else ""
        return (
            f"{_when(r['ts'])}  {r['id']}  {r['status']:<5} {r['kind']} to {r['channel']}  "
            f"decision {r['decision_id']}  attempts {r['attempts']}{err}"
        )
    if kind == "executions":
        err = f"  error: {r['error']}" if r.get("error") else ""
        return (
            f"{_when(r['started_ts'])}  {r['id']}  {r['status']:<9} {r['kind']} {r['action']} "
            f"on {r['target']}  key {r['idempotency_key']}{err}"
        )
    return (
        f"{_when(r['started_ts'])}  {r['id']}  {r['status']:<9} decision {r['decision_id']}  "
        f"deadline {_when(r['deadline_ts'])}  {json.dumps(r.get('detail'))}"
    )
