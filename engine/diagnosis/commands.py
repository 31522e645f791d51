"""CLI commands of the diagnosis subpackage: diagnosis train, diagnosis show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from engine.cliutil import home_of
from engine.errors import InputError


def register(app: typer.Typer) -> None:
    """Add the diagnosis commands to the root app."""
    group = typer.Typer(help="Diagnosis: which fault, and where.", no_args_is_help=True)
    group.command("train")(diagnosis_train)
    group.command("show")(diagnosis_show)
    app.add_typer(group, name="diagnosis")


def _seeds(raw: str, option: str) -> list[int]:
    try:
        seeds = [int(s) for s in raw.split(",") if s.strip()]
    except ValueError as exc:
        raise InputError(f"{option} {raw!r} is not a list of integers", hint=f"e.g. {option} 1,2,3") from exc
    if not seeds:
        raise InputError(f"{option} is empty", hint=f"e.g. {option} 1,2,3")
    return seeds


def diagnosis_train(
    ctx: typer.Context,
    train_seeds: Annotated[
        str, typer.Option(help="Seeds of the synthetic histories fitted on.")
    ] = "1,2,3,4,7,8,9,10,11,12",
    eval_seeds: Annotated[
        str,
        typer.Option(
            help="Seeds evaluated on (never fitted on). The default is the development split; "
            "give seeds nothing was chosen on for a held-out figure."
        ),
    ] = "5,6,13,14,15",
    days: Annotated[float, typer.Option(help="Days of history per seed.")] = 7.0,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Model file to write (default HOME/diagnosis/kind_model.json)."),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: the home's).")
    ] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the run to MLflow.")] = True,
) -> None:
    """Train the fault-kind model on the synthetic platform's labeled incidents; evaluate it held out.

    Fits a random forest on the signatures of incidents' root services (and of rows that stood out
    with no fault behind them: 'unknown') in the histories of --train-seeds, then scores it on the
    histories of --eval-seeds: accuracy per kind and strength band, per row and per incident, and
    the confusion matrix (logged as a plot, with the model, to the MLflow experiment 'diagnosis').

    Example: selfheal diagnosis train --eval-seeds 5,6,13,14,15 -o model.json
    """
    from engine.diagnosis.training import log_training, train

    fit_seeds, held_seeds = _seeds(train_seeds, "--train-seeds"), _seeds(eval_seeds, "--eval-seeds")
    shared = sorted(set(fit_seeds) & set(held_seeds))
    if shared:
        raise InputError(
            f"seeds {shared} are both fitted on and held out", hint="give --eval-seeds the model never saw"
        )
    if not 0 < days <= 60:
        raise InputError(f"--days must be in (0, 60], got {days}", hint="e.g. --days 7")
    home = home_of(ctx).ensure()
    path = out or home.root / "diagnosis" / "kind_model.json"
    model, report = train(fit_seeds, held_seeds, days=days, echo=lambda line: typer.echo(line, err=True))
    model.save(path)
    typer.echo(render_report(report))
    typer.echo(f"model: {path} ({model.version})")
    if mlflow:
        from engine.tracking.registry import resolve_tracking_uri

        run_id = log_training(model, report, path, resolve_tracking_uri(home, tracking_uri))
        typer.echo(f"mlflow run: {run_id}")


def diagnosis_show(
    model: Annotated[
        Path | None,
        typer.Argument(help="Model file (default: the shipped experiments/diagnosis/kind_model.json)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="How it was trained and evaluated, as JSON.")
    ] = False,
) -> None:
    """Print a fault-kind model: its size and, per kind, the inputs that raise its probability most.

    Example: selfheal diagnosis show
    """
    from engine.diagnosis import KindModel, shipped_model_path

    loaded = KindModel.load(model or shipped_model_path())
    if as_json:
        typer.echo(json.dumps(loaded.info, indent=2, sort_keys=True))
        return
    info = loaded.info
    accuracy = info.get("held_out_accuracy", float("nan"))
    typer.echo(
        f"{loaded.version}: trained on seeds {info.get('train_seeds')}, "
        f"evaluated on seeds {info.get('eval_seeds')} (row accuracy {accuracy:.2f})"
    )
    typer.echo(loaded.summary())


def render_report(report: dict) -> str:
    """The held-out (and in-sample) accuracy table, as the README shows it."""
    held, fit = report["held_out"]["per_kind"], report["in_sample"]["per_kind"]
    lines = [
        f"held out: seeds {report['eval_seeds']} (fitted on {report['train_seeds']})",
        f"{'kind':<18} {'rows':>5} {'row acc':>8} {'weak':>6} {'medium':>6} {'strong':>6} "
        f"{'incidents':>9} {'inc acc':>8} {'in-sample':>9}",
    ]
    for kind, h in held.items():
        bands = h.get("bands", {})
        lines.append(
            f"{kind:<18} {h['rows']:>5} {h['accuracy']:>8.2f} "
            + " ".join(
                f"{bands[b]:>6.2f}" if b in bands else f"{'-':>6}" for b in ("weak", "medium", "strong")
            )
            + (
                f" {h['incidents']:>9} {h['incident_accuracy']:>8.2f}"
                if "incidents" in h
                else f" {'-':>9} {'-':>8}"
            )
            + f" {fit.get(kind, {}).get('accuracy', float('nan')):>9.2f}"
        )
    return "\n".join(lines)
