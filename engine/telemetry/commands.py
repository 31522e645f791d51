"""CLI commands of the telemetry subpackage: ingest."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

FORMAT_HELP = "csv, parquet, jsonl, nab or prom; default: from the extension (a NAB folder is detected)."


def ingest_command(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to load.", show_default=False)],
    fmt: Annotated[str | None, typer.Option("--format", "-f", help=FORMAT_HELP)] = None,
    ts: Annotated[
        datetime | None,
        typer.Option(
            "--ts",
            help="Timestamp (UTC) for Prometheus samples that carry none; default: the file's mtime.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Load telemetry files (CSV, Parquet, JSONL, Prometheus text, a NAB folder) into the store.

    Valid rows are stored once: re-ingesting skips rows that are already there (duplicates).
    A row whose key is stored with another value is a conflict: the stored value stays.

    Bad rows (bad timestamp or value, missing field) and conflicts go to a quarantine file with
    file, line, reason (conflicts also with the stored and the new value).

    Incidents written by `selfheal synth --out` (*.incidents.parquet) load as incidents.

    Exits 2 only when nothing valid was read.

    Example: selfheal ingest ../shared/data/nab

    Example: selfheal ingest metrics.csv scrape.prom --ts 2026-01-01T00:00:00
    """
    from engine.cliutil import home_of
    from engine.errors import InputError
    from engine.telemetry.ingest import ingest
    from engine.telemetry.readers import FORMATS
    from engine.telemetry.store import TelemetryStore

    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    home = home_of(ctx).ensure()
    report = ingest(
        paths, db=home.telemetry_db, quarantine_dir=home.quarantine, fmt=fmt, default_ts=ts, progress=True
    )
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for line in report.lines():
            typer.echo(line)
        if home.telemetry_db.is_file():
            with TelemetryStore(home.telemetry_db, read_only=True) as store:
                summary = store.summary()
            typer.echo(
                f"store: {home.telemetry_db}: {summary['points']} points in {summary['series']} series "
                f"of {len(summary['services'])} services, {summary['incidents']} incidents"
            )
    report.check()


def register(app: typer.Typer) -> None:
    """Add this subpackage's commands to the root app."""
    app.command("ingest")(ingest_command)
