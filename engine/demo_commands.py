"""The ``selfheal demo`` command: the main job end to end (``engine.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engine.cliutil import home_of
from engine.demo import CAMPAIGN_N, CAMPAIGN_SEED, run_demo
from engine.tracking.commands import TrackingUri


def demo(
    ctx: typer.Context,
    days: Annotated[float, typer.Option(help="Days of synthetic telemetry.")] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic platform.")] = 0,
    spec: Annotated[
        Path | None, typer.Option(help="Experiment spec (default: experiments/demo_quick.yaml).")
    ] = None,
    tracking_uri: TrackingUri = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes for the sweep and the closed-loop assessment.")
    ] = None,
    campaign_n: Annotated[
        int, typer.Option("--campaign-n", help="Chaos experiments each candidate faces before promotion.")
    ] = CAMPAIGN_N,
    campaign_seed: Annotated[
        int, typer.Option("--campaign-seed", help="Seed of that campaign (every candidate faces the same).")
    ] = CAMPAIGN_SEED,
    game_day: Annotated[
        bool, typer.Option("--game-day/--no-game-day", help="End with the chaos game day and its report.")
    ] = True,
) -> None:
    """The main job: synth -> ingest -> experiment -> closed-loop assessment -> promote -> evaluation
    -> bundle -> game day on the promoted bundle.

    Every candidate of the sweep faces the same small chaos campaign (--campaign-n experiments of
    --campaign-seed) and the gate promotes the best healer. Ends with a summary and the path of the
    HTML game-day report. Idempotent: a second run reuses the data and keeps the champion unless a
    challenger beats it on detection and heals at least as well.

    Example: selfheal --home /tmp/sh demo --days 7 --campaign-n 4
    """
    summary = run_demo(
        home_of(ctx),
        days=days,
        seed=seed,
        spec=spec,
        tracking_uri=tracking_uri,
        workers=workers,
        game_day=game_day,
        campaign_n=campaign_n,
        campaign_seed=campaign_seed,
        echo=typer.echo,
    )
    typer.echo(summary.render())
    if not summary.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the demo command to the root app."""
    app.command("demo")(demo)
