"""CLI commands of the telemetry subpackage: ingest."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this subpackage's commands to the root app."""
