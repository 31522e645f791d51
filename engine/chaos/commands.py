"""CLI: ``selfheal chaos run|validate|list|platform`` and ``selfheal replay``."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from engine.cliutil import AddressOption, Executor, ExecutorOption, home_of
from engine.tracking.registry import DEFAULT_MODEL


def chaos_assess(
    ctx: typer.Context,
    runs: Annotated[
        list[str], typer.Argument(help="A sweep run id (its best --top candidates) or configuration run ids.")
    ],
    top: Annotated[int, typer.Option("--top", help="How many of a sweep's best candidates to assess.")] = 2,
    n: Annotated[int, typer.Option("--n", help="Experiments in the campaign each candidate faces.")] = 8,
    seed: Annotated[
        int, typer.Option("--seed", help="The campaign's seed: every candidate faces the same faults.")
    ] = 0,
    workers: Annotated[
        int | None,
        typer.Option(help="Candidates assessed at once, each in its own process (default: cores)."),
    ] = None,
    executor: ExecutorOption = Executor.local,
    address: AddressOption = None,
    name: Annotated[
        str, typer.Option("--name", help="Registered model the candidates are versions of.")
    ] = DEFAULT_MODEL,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Campaigns folder (default HOME/chaos/assess-<seed>/<time>)."),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (default: the home's).")
    ] = None,
) -> None:
    """Closed-loop assessment: bundle the best candidates, run the same seeded chaos campaign against each.

    Every candidate is registered as a version of --name, bundled with the shipped policies (signed
    with the home's key) and faces the same campaign (--n experiments drawn from --seed, as `chaos
    campaign` draws them). Heal rate, TTD/TTR, actions on victims and actions in quiet controls go
    into each candidate's MLflow run (closed_loop.*), where `selfheal promote` judges them; on a
    sweep, the best healer becomes the candidate `selfheal promote SWEEP_RUN` puts forward.

    The campaigns run in worker processes of this machine, or as Ray tasks with --executor ray
    (the home folder must then be at the same path on every node of a cluster at --address).

    Example: selfheal chaos assess 3f2a9c... --top 2 --n 8 --seed 11 --workers 2
    """
    from engine.chaos.assess import assess
    from engine.errors import InputError
    from engine.hints import selfheal_command
    from engine.tracking import registry

    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}", hint="e.g. --workers 2")
    home = home_of(ctx)
    uri = registry.resolve_tracking_uri(home, tracking_uri)
    result = assess(
        runs,
        home=home,
        tracking_uri=uri,
        n=n,
        seed=seed,
        top=top,
        workers=workers,
        executor=executor.value,
        address=address,
        name=name,
        out_dir=out,
        echo=typer.echo,
    )
    typer.echo("")
    typer.echo(result.table())
    typer.echo(
        f"\n{len(result.candidates)} candidate(s) x {n} experiments (seed {seed}) in {result.wall_s:.0f} s, "
        f"{result.workers} worker(s); campaign reports under {result.out_dir}"
    )
    target = runs[0] if len(runs) == 1 else result.best.run_id
    flags = [] if uri == home.tracking_uri else ["--tracking-uri", uri]
    typer.echo(f"next: {selfheal_command(home, 'promote', target, '--name', name, *flags)}")


def register(app: typer.Typer) -> None:
    """Add the chaos commands (and the shadow replay) to the root app."""
    chaos = typer.Typer(help="Chaos experiments against the simulated platform.", no_args_is_help=True)
    chaos.command("run")(chaos_run)
    chaos.command("campaign")(chaos_campaign)
    chaos.command("assess")(chaos_assess)
    chaos.command("validate")(chaos_validate)
    chaos.command("list")(chaos_list)
    chaos.command("platform")(chaos_platform)
    app.add_typer(chaos, name="chaos")
    app.command("replay")(replay)


def _echo(line: str) -> None:
    typer.echo(line, err=True)


def chaos_run(
    ctx: typer.Context,
    experiments: Annotated[
        list[str],
        typer.Argument(help="Experiment files or names from experiments/chaos (game_day, memory_leak, ...)."),
    ],
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", "-b", help="Run this bundle's detector and policies (default: fit one)."),
    ] = None,
    speed: Annotated[
        float | None, typer.Option(help="Platform seconds per wall second (default: the experiment's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder (default HOME/chaos/<time>).")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: the home's).")
    ] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log every run to MLflow.")] = True,
) -> None:
    """Run chaos experiments: start the simulated platform and the engine, inject faults, judge.

    Writes, per experiment, the engine's journal (engine.sqlite) and journal.json; for the whole
    run report.html (timeline and detect/recover table, self-contained) and summary.txt. Exit code
    0 when every experiment passed, 1 when one failed or aborted.

    Example: selfheal chaos run game_day bad_deploy_expired --speed 720
    """
    from engine.bundle import load_bundle
    from engine.bundle.signing import Trust
    from engine.chaos.api import run_experiments

    home = home_of(ctx).ensure()
    folder = out or home.new_run("chaos")
    uri = None
    if mlflow:
        from engine.tracking.registry import resolve_tracking_uri

        uri = resolve_tracking_uri(home, tracking_uri)
    started = time.perf_counter()
    loaded = load_bundle(bundle, trust=Trust.for_home(home)) if bundle is not None else None
    report = run_experiments(experiments, folder, bundle=loaded, speed=speed, tracking_uri=uri, echo=_echo)
    typer.echo(report.text().rstrip())
    typer.echo(f"report: {report.html}")
    typer.echo(f"summary: {report.summary}")
    typer.echo(f"took {time.perf_counter() - started:.1f} s")
    if not report.passed:
        raise typer.Exit(1)


def chaos_campaign(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", help="How many experiments to draw.")] = 50,
    seed: Annotated[
        int, typer.Option(help="The campaign's seed: the same seed draws the same experiments.")
    ] = 0,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", "-b", help="Run this bundle's detector and policies (default: fit one)."),
    ] = None,
    speed: Annotated[
        float | None, typer.Option(help="Platform seconds per wall second (default 720).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Experiments run at once, each in its own process.")] = 1,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Campaign folder (default HOME/chaos/campaign-<seed>/<time>)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write and validate the generated experiments; run nothing.")
    ] = False,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: the home's).")
    ] = None,
    mlflow: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="Log the campaign's figures to MLflow.")
    ] = True,
) -> None:
    """Draw chaos experiments at random from a seed, run them against the engine, report the heal rate.

    Each experiment is a fault kind on an eligible service (or two at once, or a quiet control
    with no fault) at 0.5x to 5x the shipped strength, at a random weekday and time; its expected
    remedy comes from the policies. Writes experiments/*.yaml and campaign.json (the draw),
    one folder per experiment (journal, report.html), campaign.html (heal rate per kind, TTD/TTR
    distributions, every unexpected action with its rule, approvals) and summary.txt. Exit code 0
    when the campaign ran (its figures are the result), 2 on bad input.

    Example: selfheal chaos campaign --n 50 --seed 7 --workers 2
    """
    from engine.chaos.campaign import generate_campaign, write_campaign
    from engine.errors import InputError

    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}", hint="e.g. --workers 2")
    home = home_of(ctx).ensure()
    folder = out or home.new_run("chaos", f"campaign-{seed}")
    loaded = None
    if bundle is not None:
        from engine.bundle import load_bundle
        from engine.bundle.signing import Trust

        # verified once against the home's trusted keys (as `chaos run --bundle` does); the
        # workers get the loaded bundle, not its folder
        loaded = load_bundle(bundle, trust=Trust.for_home(home))
    campaign = generate_campaign(n, seed, policies=loaded.policies if loaded is not None else None)
    if dry_run:
        paths = write_campaign(campaign, folder)
        for g, path in zip(campaign.items, paths, strict=True):
            typer.echo(f"ok  {path}: {g.draw.label}, {g.draw.when}")
        typer.echo(f"{len(paths)} experiments written and valid: {folder / 'experiments'}")
        typer.echo(f"draw: {folder / 'campaign.json'}")
        return
    from engine.chaos.campaign_run import run_campaign

    uri = None
    if mlflow:
        from engine.tracking.registry import resolve_tracking_uri

        uri = resolve_tracking_uri(home, tracking_uri)
    result = run_campaign(
        campaign, folder, bundle=loaded, speed=speed, workers=workers, tracking_uri=uri, echo=_echo
    )
    from engine.chaos.campaign_report import render_text

    typer.echo(render_text(result))
    typer.echo(f"report: {folder / 'campaign.html'}")


def chaos_validate(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Experiment files or folders of them (default: every experiments/chaos/*.yaml)."),
    ] = None,
) -> None:
    """Validate chaos experiments without running them; every problem of every file at once.

    A folder stands for every *.yaml inside it, e.g. the experiments a campaign generated
    (selfheal chaos campaign --dry-run writes them). Exit code 0 when all are valid, 2 otherwise.

    Example: selfheal chaos validate experiments/chaos/game_day.yaml
    """
    from engine.chaos.api import EXPERIMENTS_DIR
    from engine.chaos.experiment import load_experiment
    from engine.errors import Problem, SpecError

    paths = [p for f in files or [EXPERIMENTS_DIR] for p in (sorted(f.glob("*.yaml")) if f.is_dir() else [f])]
    problems: list[Problem] = []
    for path in paths:
        try:
            exp = load_experiment(path)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        typer.echo(f"ok  {path}: {exp.title} ({', '.join(exp.kinds)})")
    if problems:
        raise SpecError(problems, hint="fix the experiment files; see experiments/chaos/README.md")


def chaos_list() -> None:
    """List the shipped chaos experiments with the incident kinds they inject.

    Example: selfheal chaos list
    """
    from engine.chaos.api import EXPERIMENTS_DIR
    from engine.chaos.experiment import load_experiment

    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        exp = load_experiment(path)
        typer.echo(f"{path.stem:<20} {', '.join(exp.kinds):<55} {exp.title}")


def chaos_platform(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (the targets file's default is 8750).")] = 8750,
    speed: Annotated[float, typer.Option(help="Platform seconds per wall second.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Noise and traffic seed.")] = 0,
) -> None:
    """Serve the simulated platform alone: /metrics (Prometheus) and the admin API, until Ctrl-C.

    Point an engine at it with a Prometheus source and engine/simulation/prometheus_mapping.yaml;
    inject faults with POST /admin/{service}/faults (the contract: engine/simulation/server.py).

    Example: selfheal chaos platform --port 8750 --speed 60
    """
    import threading

    from engine.simulation.clock import ScaledClock
    from engine.simulation.live import SimulatedPlatform
    from engine.simulation.server import PlatformServer

    clock = ScaledClock(time.time(), speed=speed)
    platform = SimulatedPlatform(clock, seed=seed)
    platform.start_at(clock.now())
    server = PlatformServer(platform, port=port).start()
    stop = threading.Event()
    typer.echo(f"simulated platform on {server.url} (x{speed:g}); Ctrl-C to stop", err=True)
    try:
        while not stop.wait(0.2):
            platform.advance_to(clock.now())
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def replay(
    ctx: typer.Context,
    bundle: Annotated[
        Path, typer.Argument(help="The bundle to try (a directory made by `selfheal bundle build`).")
    ],
    since: Annotated[str, typer.Option(help="Start of the history to replay (ISO time, naive UTC).")],
    until: Annotated[str, typer.Option(help="End of the history (exclusive).")],
    services: Annotated[list[str] | None, typer.Option("--service", help="Only these services.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the replay as JSON here.")] = None,
) -> None:
    """Shadow replay: what a bundle would have detected, decided and asked, over stored history.

    No side effects: nothing is executed and no journal is written. Anomalies, decisions (with
    the safeguard or approval that would apply) and approvals are lined up against the incidents
    labeled in the store (event-level precision, recall and delay).

    Example: selfheal replay .selfheal/bundles/champion --since 2026-01-10 --until 2026-01-12
    """
    from engine.bundle.signing import Trust
    from engine.chaos.replay import replay_bundle

    home = home_of(ctx)
    result = replay_bundle(
        bundle,
        home.telemetry_db,
        since=datetime.fromisoformat(since),
        until=datetime.fromisoformat(until),
        services=services or None,
        progress=True,
        trust=Trust.for_home(home),
    )
    typer.echo(result.render())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.to_json())
        typer.echo(f"written: {out}")
