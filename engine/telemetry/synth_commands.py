"""CLI commands of the telemetry subpackage: synth."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from engine.cliutil import home_of
from engine.errors import InputError


def _parse_start(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError as exc:
        raise InputError(
            f"--start {raw!r} is not an ISO date/time", hint="e.g. --start 2026-01-05 or 2026-01-05T00:00:00"
        ) from exc


def _check_out(out: Path | None) -> None:
    """``--out`` names the points file to write; refuse a folder (or a path under a file) up front."""
    if out is None:
        return
    if out.is_dir():
        raise InputError(
            f"--out {out} is a folder; it names the Parquet file to write the points to",
            hint=f"e.g. --out {out / 'synth.parquet'} (the incidents go beside it as "
            "synth.incidents.parquet; `selfheal ingest` reads both back)",
        )
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InputError(
            f"--out {out}: {blocker} is a file, not a folder", hint="choose a path inside a folder"
        )


def synth(
    ctx: typer.Context,
    days: Annotated[float, typer.Option(help="Days of history to generate.")] = 14.0,
    services: Annotated[
        int | None,
        typer.Option(
            help="Services: fewer than configured keeps a prefix in dependency order; "
            "more adds inference replicas (inference-c, ...). Default: as configured (6)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives identical data.")] = 0,
    start: Annotated[
        str | None, typer.Option(help="Start time, ISO, naive UTC. Default: the config's start.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Generator config. Default: datasets/synth_platform.yaml.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Also write the points to this Parquet file (incidents beside it)."),
    ] = None,
    store: Annotated[
        bool, typer.Option("--store/--no-store", help="Land the data in the home's DuckDB store.")
    ] = True,
) -> None:
    """Generate synthetic AI-platform telemetry with labeled incidents and land it in the store.

    Services (gateway, inference replicas, vector-db, feature-store, ingestion) emit every 10 s,
    with daily seasonality, noise, correlated load and incidents of five kinds that cascade to
    their dependents. Incidents are labeled on their root service only. Re-running with the same
    arguments inserts nothing new.

    Example: selfheal synth --days 14 --services 6 --seed 0 --out /tmp/synth.parquet
    """
    from tqdm import tqdm

    from engine.telemetry.synth import check_request, generate, load_config, write_parquet

    home = home_of(ctx)
    started = time.perf_counter()
    # every argument is checked before the bar starts, so a mistake is one clean error line
    cfg = load_config(config)
    start_at = _parse_start(start)
    check_request(cfg, days, services)
    _check_out(out)
    steps = ["generate", *(["parquet"] if out else []), *(["store"] if store else [])]
    with tqdm(total=len(steps), desc="synth", unit="step", leave=False) as bar:
        bar.set_postfix_str("generate")
        data = generate(cfg, days=days, services=services, seed=seed, start=start_at)
        bar.update()
        written: tuple[Path, Path] | None = None
        if out:
            bar.set_postfix_str("parquet")
            written = write_parquet(data, out)
            bar.update()
        inserted = incidents_inserted = 0
        if store:
            from engine.telemetry.store import TelemetryStore

            bar.set_postfix_str("store")
            home.ensure()
            with TelemetryStore(home.telemetry_db) as db:
                inserted = db.insert_points(data.points, source="synth")
                incidents_inserted = db.insert_incidents(data.incidents)
            bar.update()
    elapsed = time.perf_counter() - started

    by_kind = data.incidents.group_by("kind").len().sort("kind").rows()
    n_series = data.points.select("service", "metric").unique().height
    echo = typer.echo
    echo(f"generated {data.points.height:,} points in {n_series} series over {len(data.topology)} services")
    echo(f"time range: {data.start.isoformat()} .. {data.end.isoformat()} (end exclusive), seed {seed}")
    echo(f"incidents: {data.incidents.height} ({', '.join(f'{k} {n}' for k, n in by_kind) or 'none'})")
    if written:
        echo(f"parquet: {written[0]} (points), {written[1]} (incidents)")
    if store:
        echo(f"store: {home.telemetry_db}: {inserted:,} new points, {incidents_inserted} new incidents")
    echo(f"elapsed: {elapsed:.1f} s")


def register(app: typer.Typer) -> None:
    """Add this subpackage's commands to the root app."""
    app.command("synth")(synth)
