"""CLI commands of the tracking subpackage: experiment, promote, models, evaluate.

Heavy imports (mlflow, papermill, polars, pyod) happen inside the command functions so that
``selfheal --help`` stays fast.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from engine.cliutil import AddressOption, Executor, ExecutorOption, home_of
from engine.hints import selfheal_command
from engine.tracking.registry import DEFAULT_MODEL

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite in the home folder).",
    ),
]


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def experiment_run(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="Experiment spec (experiments/*.yaml).")],
    tracking_uri: TrackingUri = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Configurations fitted at once (default: one per core, at most one per config)."),
    ] = None,
    executor: ExecutorOption = Executor.local,
    address: AddressOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Run a detector sweep from a spec and track it in MLflow (a parent run, a child per config).

    The configurations are fitted in worker processes of this machine, or as Ray tasks with
    --executor ray (on a Ray started here with --workers CPUs, or on the cluster at --address);
    this process logs every run to MLflow either way, so the runs are the same.

    Example: selfheal experiment run experiments/synth_pyod_sweep.yaml --workers 2

    Example: selfheal experiment run experiments/synth_pyod_sweep.yaml --executor ray --workers 2
    """
    from engine.tracking.experiment import run_experiment
    from engine.tracking.spec import load_spec

    home = home_of(ctx)
    model_name = load_spec(spec).spec.tracking.model_name or DEFAULT_MODEL
    result = run_experiment(
        spec,
        home=home,
        tracking_uri=tracking_uri,
        workers=workers,
        executor=executor.value,
        address=address,
        progress=progress,
    )
    typer.echo(result.table())
    best = result.best
    assert best is not None
    typer.echo(
        f"\nsweep run {result.parent_run_id}: {len(result.results)} configurations in {result.seconds:.1f}s; "
        f"data fingerprint {result.data_fingerprint}"
    )
    typer.echo(
        f"best by {result.metric}: {best.config.label} = {_fmt(best.metrics.get(result.metric))} "
        f"(run {best.run_id})"
    )
    typer.echo(f"tracking: {result.tracking_uri}")
    uri = [] if result.tracking_uri == home.tracking_uri else ["--tracking-uri", result.tracking_uri]
    typer.echo(f"next: {selfheal_command(home, 'promote', str(best.run_id), '--name', model_name, *uri)}")


def experiment_families(
    ctx: typer.Context,
    spec: Annotated[
        Path | None,
        typer.Argument(help="Comparison spec (default: experiments/families/compare.yaml)."),
    ] = None,
    tracking_uri: TrackingUri = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log to MLflow.")] = False,
) -> None:
    """Compare detector families per incident kind (recall, detection delay) on synthetic data.

    Generates the platform for each seed, fits every family on the training days, scores the rest
    in time order, prints the per-kind table and logs it to MLflow (experiment "families").

    Example: selfheal experiment families experiments/families/compare.yaml
    """
    from tqdm import tqdm

    from engine.evaluation.families import compare_families, log_comparison, merge
    from engine.evaluation.families_spec import load_comparison_spec
    from engine.telemetry.synth import generate, load_config
    from engine.tracking import registry

    loaded = load_comparison_spec(spec)
    families = [f.to_family() for f in loaded.families]
    cfg = load_config()
    parts = []
    for seed in tqdm(loaded.seeds, desc="seeds", unit="seed", file=sys.stderr):
        data = generate(cfg, days=loaded.days, seed=seed)
        parts.append(
            compare_families(
                data.points,
                data.incidents,
                families=families,
                train_days=loaded.train_days,
                interval=loaded.interval,
                alarms_per_day=loaded.alarms_per_day,
                holdout_fraction=loaded.holdout_fraction,
            )
        )
    comparison = merge(parts)
    comparison.settings.update({"seeds": loaded.seeds, "days": loaded.days, "spec": loaded.name})
    typer.echo(comparison.table())
    if not no_mlflow:
        uri = registry.resolve_tracking_uri(home_of(ctx).ensure(), tracking_uri)
        run_id = log_comparison(comparison, tracking_uri=uri, experiment=loaded.name)
        typer.echo(f"logged to {uri}: run {run_id} (experiment {loaded.name!r})")


def experiment_validate(
    specs: Annotated[list[Path], typer.Argument(help="Spec files to validate.")],
) -> None:
    """Validate experiment specs without reading data; every problem is listed at once.

    Example: selfheal experiment validate experiments/*.yaml
    """
    from engine.errors import SpecError
    from engine.tracking.spec import load_spec

    problems = []
    for path in specs:
        try:
            loaded = load_spec(path)
            typer.echo(f"{path}: ok ({len(loaded.spec.configs())} configurations)")
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems, hint="fix the listed keys and run again")


def promote(
    ctx: typer.Context,
    run_id: Annotated[
        str, typer.Argument(help="A configuration run id (or a sweep run id: its best child).")
    ],
    name: Annotated[str, typer.Option("--name", help="Registered model name.")] = DEFAULT_MODEL,
    force: Annotated[bool, typer.Option("--force", help="Override the champion/challenger gate.")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why --force (recorded as a tag).")] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Register a run's model and move alias `champion` if it wins the gate against the champion.

    The gate: the challenger beats the champion's detection metric on the same evaluation AND, on
    the same campaign (`selfheal chaos assess`), heals at least as many faults, with no action
    on a victim, no false action in a quiet control and no high-risk action without approval. The
    verdict is printed as a table (champion vs challenger per criterion). A sweep run id stands for
    its best candidate: the best healer when the sweep was assessed, else the best detector.
    Exit code 0 when the model is the champion afterwards, 1 when the gate kept the old champion.

    Example: selfheal promote 3f2a9c... --name selfheal-detector
    """
    from engine.tracking import registry

    uri = registry.resolve_tracking_uri(home_of(ctx), tracking_uri)
    result = registry.promote(run_id, name, tracking_uri=uri, force=force, reason=reason)
    typer.echo(result.summary())
    if result.criteria:
        typer.echo(result.table())
    is_champion = result.promoted or result.reason == "already the champion"
    if not is_champion:
        typer.echo(
            "hint: a challenger must beat the champion on the same data and heal at least as well in the "
            "same campaign; --force --reason TEXT overrides"
        )
        raise typer.Exit(1)


def models_list(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")] = DEFAULT_MODEL,
    tracking_uri: TrackingUri = None,
) -> None:
    """Show a registered model's versions, aliases and metrics.

    Example: selfheal models list selfheal-detector
    """
    from engine.tracking import registry
    from engine.tracking.experiment import metric_cells, metric_header

    uri = registry.resolve_tracking_uri(home_of(ctx), tracking_uri)
    rows = registry.list_versions(name, tracking_uri=uri)
    typer.echo(f"{'version':>7}  {'aliases':<12} {metric_header()}  gate / run")
    for r in rows:
        vals = metric_cells(r.metrics)
        gate = r.tags.get("selfheal.gate", "")
        if r.tags.get("selfheal.forced") == "true":
            gate = f"forced: {r.tags.get('selfheal.force_reason', '')}"
        typer.echo(f"{r.version:>7}  {','.join(r.aliases) or '-':<12} {vals}  {gate[:60]} {r.run_id}")


def models_rollback(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Registered model name.")] = DEFAULT_MODEL,
    tracking_uri: TrackingUri = None,
) -> None:
    """Move alias `champion` back to the version that held it before the current one.

    Example: selfheal models rollback selfheal-detector
    """
    from engine.tracking import registry

    uri = registry.resolve_tracking_uri(home_of(ctx), tracking_uri)
    result = registry.rollback(name, tracking_uri=uri)
    typer.echo(f"{name}: champion moved back from version {result.from_version} to {result.to_version}")


def evaluate(
    ctx: typer.Context,
    notebook: Annotated[Path, typer.Argument(help="Notebook to execute (notebooks/*.ipynb).")],
    tracking_uri: TrackingUri = None,
    kernel: Annotated[str, typer.Option(help="Jupyter kernel to run on.")] = "selfheal",
) -> None:
    """Execute a notebook with papermill, keep the executed copy, print papermill's verdict.

    Parameters: -p NAME VALUE (repeatable; values are read as YAML scalars, so 2 is an int, 0.3 a
    float, null None). The executed copy goes to HOME/notebooks/NAME-TIMESTAMP.ipynb; exit code 1
    when a cell failed (for example the quality gate of 03_scheduled_evaluation).

    Example: selfheal evaluate notebooks/03_scheduled_evaluation.ipynb -p window_days 2 -p min_quality 0.3
    """
    from engine.tracking.notebooks import coerce, run_notebook

    params = {k: coerce(v) for k, v in _parameters(ctx.args)}
    result = run_notebook(notebook, params, home=home_of(ctx), tracking_uri=tracking_uri, kernel=kernel)
    typer.echo(result.verdict())
    if result.run_id:
        typer.echo(f"mlflow run: {result.run_id}")
    if not result.ok:
        raise typer.Exit(1)


def _parameters(args: list[str]) -> list[tuple[str, str]]:
    """``-p NAME VALUE`` pairs (papermill's syntax; typer has no two-value repeatable options)."""
    from engine.errors import ConfigError

    pairs = []
    rest = list(args)
    while rest:
        flag = rest.pop(0)
        if flag not in ("-p", "--parameter") or len(rest) < 2:
            raise ConfigError(f"cannot read notebook parameters at '{flag}'", hint="pass -p NAME VALUE pairs")
        pairs.append((rest.pop(0), rest.pop(0)))
    return pairs


def register(app: typer.Typer) -> None:
    """Add this subpackage's commands to the root app."""
    experiment = typer.Typer(
        help="Detector sweeps from experiment specs, tracked in MLflow.", no_args_is_help=True
    )
    experiment.command("run")(experiment_run)
    experiment.command("validate")(experiment_validate)
    experiment.command("families")(experiment_families)
    app.add_typer(experiment, name="experiment")
    app.command("promote")(promote)
    models = typer.Typer(
        help="Registered detector models: versions, aliases, rollback.", no_args_is_help=True
    )
    models.command("list")(models_list)
    models.command("rollback")(models_rollback)
    app.add_typer(models, name="models")
    app.command("evaluate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        evaluate
    )
