"""The ``selfheal demo`` command: the main job end to end (``engine.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engine.cliutil import home_of
from engine.demo import run_demo
from engine.tracking.commands import TrackingUri


def demo(
    ctx: typer.Context,
    days: Annotated[float, typer.Option(help="Days of synthetic telemetry.")] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic platform.")] = 0,
    spec: Annotated[
        Path | None, typer.Option(help="Experiment spec (default: experiments/demo_quick.yaml).")
    ] = None,
    tracking_uri: TrackingUri = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes for the sweep.")] = None,
    game_day: Annotated[
        bool, typer.Option("--game-day/--no-game-day", help="End with the chaos game day and its report.")
    ] = True,
) -> None:
    """The main job: synth -> ingest -> experiment -> promote -> evaluation -> bundle -> game day.

    Ends with a summary and the path of the HTML game-day report. Idempotent: a second run reuses
    the data and keeps the champion unless a challenger beats it.

    Example: selfheal --home /tmp/sh demo --days 7
    """
    summary = run_demo(
        home_of(ctx),
        days=days,
        seed=seed,
        spec=spec,
        tracking_uri=tracking_uri,
        workers=workers,
        game_day=game_day,
        echo=typer.echo,
    )
    typer.echo(summary.render())
    if not summary.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the demo command to the root app."""
    app.command("demo")(demo)
