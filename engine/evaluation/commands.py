"""CLI commands of the evaluation subpackage: ``selfheal nab score`` and ``selfheal nab run``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from engine.errors import ConfigError

nab_app = typer.Typer(
    name="nab",
    help="Numenta Anomaly Benchmark: score results folders, run detectors through the online path.",
    no_args_is_help=True,
)

CorpusOpt = Annotated[
    Path,
    typer.Option("--corpus", help="NAB-layout corpus folder (data/, labels/combined_windows.json)."),
]


def _parse_thresholds(items: list[str] | None) -> dict[str, float] | None:
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            out[name.strip()] = float(value)
        except ValueError as exc:
            raise ConfigError(
                f"--threshold {item!r} is not PROFILE=VALUE",
                hint="e.g. --threshold standard=0.5421876907348634",
            ) from exc
    return out


@nab_app.command("score")
def score_cmd(
    corpus: CorpusOpt,
    results: Annotated[
        Path, typer.Option("--results", help="NAB-layout results folder <category>/<detector>_<file>.csv.")
    ],
    detector: Annotated[
        str | None,
        typer.Option(
            "--detector", help="Detector name prefix in the results folder (when it holds several)."
        ),
    ] = None,
    threshold: Annotated[
        Optional[list[str]],  # noqa: UP045 - typer 0.29 cannot parse "list[str] | None"
        typer.Option(
            "--threshold",
            help="PROFILE=VALUE: score that profile at this threshold instead of optimising it.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the metrics as JSON instead of tables.")
    ] = False,
) -> None:
    """Score a NAB-layout results folder under the three NAB profiles (threshold optimised per profile).

    Example: selfheal nab score --corpus ../shared/data/nab --results ../shared/data/nab/reference/numenta
    """
    from engine.evaluation.nab import format_report, load_corpus, load_results, score_results

    nab = load_corpus(corpus)
    if note := nab.disorder():
        typer.echo(note, err=True)
    name, scores = load_results(results, nab, detector=detector)
    report = score_results(nab, scores, thresholds=_parse_thresholds(threshold))
    if as_json:
        typer.echo(json.dumps({"detector": name, **report.as_dict()}, indent=2, sort_keys=True))
        return
    how = "optimised thresholds" if report.optimized else "given thresholds"
    typer.echo(f"{name} on {nab.root} ({report.n_files} files, {report.n_points} rows; {how})")
    typer.echo(format_report(report))


@nab_app.command("run")
def run_cmd(
    ctx: typer.Context,
    corpus: CorpusOpt,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for NAB-layout results <category>/<name>_<file>.csv.")
    ],
    detector: Annotated[
        Optional[list[str]],  # noqa: UP045 - typer 0.29 cannot parse "list[str] | None"
        typer.Option(
            "--detector",
            help="Detector spec: a YAML/JSON file or a spec name in experiments/nab/ (default: "
            "default.yaml). With --cv, repeat it to name the candidates (default: the grid "
            "experiments/nab/cv/grid.yaml).",
        ),
    ] = None,
    cv: Annotated[
        bool,
        typer.Option(
            "--cv",
            help="Leave-one-category-out cross-validation: each category scored by a candidate and "
            "threshold chosen on the other categories; prints it beside the in-sample scores.",
        ),
    ] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the home's SQLite).",
        ),
    ] = None,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log the run to MLflow.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes; series are independent.")] = 1,
    category: Annotated[
        Optional[list[str]],  # noqa: UP045 - typer 0.29 cannot parse "list[str] | None"
        typer.Option("--category", help="Run only these categories (repeatable)."),
    ] = None,
) -> None:
    """Replay every series of a NAB corpus through the online path and score the results.

    One point at a time, no look-ahead: features from engine.features.OnlineFeatures, warm-up on the
    probationary rows only, refits on past rows only. Writes NAB results, prints the three profile
    scores and a per-category table, logs the run to MLflow (experiment "nab").

    Example: selfheal nab run --corpus ../shared/data/nab --out /tmp/nab-results
    Example: selfheal nab run --corpus ../shared/data/nab --out /tmp/nab-cv --cv --workers 2
    """
    from engine.cliutil import home_of
    from engine.evaluation.nab import format_report, load_corpus
    from engine.evaluation.streaming import load_detector_spec, log_run, run_corpus

    if cv:
        _cross_validate(ctx, corpus, out, detector, category, workers, tracking_uri, no_mlflow)
        return
    if detector and len(detector) > 1:
        raise ConfigError(
            "several --detector without --cv", hint="give one spec, or add --cv to compare them"
        )
    spec = load_detector_spec(detector[0] if detector else None)
    nab = load_corpus(corpus, categories=category)
    if note := nab.disorder():
        typer.echo(note, err=True)
    result = run_corpus(nab, spec, out, workers=workers, progress=True)
    typer.echo(
        f"{spec.name} on {nab.root}: {result.n_points} points in {result.seconds:.1f} s "
        f"({result.points_per_second:,.0f} points/s); results in {out}"
    )
    typer.echo(format_report(result.report))
    if not no_mlflow:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or home_of(ctx).ensure().tracking_uri
        run_id = log_run(result, spec, tracking_uri=uri, corpus=nab.root, out=out)
        typer.echo(f"MLflow run {run_id} (experiment 'nab') at {uri}")


def _cross_validate(
    ctx: typer.Context,
    corpus: Path,
    out: Path,
    detectors: list[str] | None,
    categories: list[str] | None,
    workers: int,
    tracking_uri: str | None,
    no_mlflow: bool,
) -> None:
    """``nab run --cv``: replay every candidate once, then leave one category out at a time."""
    from engine.cliutil import home_of
    from engine.evaluation.cv import candidate_specs, cross_validate, format_cv, log_cv
    from engine.evaluation.nab import load_corpus
    from engine.evaluation.streaming import run_corpus

    specs = candidate_specs(detectors)
    nab = load_corpus(corpus, categories=categories)
    if note := nab.disorder():
        typer.echo(note, err=True)
    scores = {}
    for i, spec in enumerate(specs, start=1):
        result = run_corpus(nab, spec, out, workers=workers, progress=True)
        scores[spec.name] = result.scores
        typer.echo(
            f"[{i}/{len(specs)}] {spec.name}: {result.n_points} points in {result.seconds:.1f} s "
            f"({result.points_per_second:,.0f} points/s), in-sample standard "
            f"{result.report.profiles['standard'].score:.2f}",
            err=True,
        )
    report = cross_validate(nab, scores, on_fold=lambda cat: typer.echo(f"fold {cat} done", err=True))
    typer.echo(f"{len(specs)} candidates on {nab.root}; results in {out}")
    typer.echo(format_cv(report))
    if not no_mlflow:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or home_of(ctx).ensure().tracking_uri
        run_id = log_cv(report, specs, tracking_uri=uri, corpus=nab.root, out=out)
        typer.echo(f"MLflow run {run_id} (experiment 'nab') at {uri}")


def register(app: typer.Typer) -> None:
    """Add this subpackage's commands to the root app."""
    app.add_typer(nab_app, name="nab")
