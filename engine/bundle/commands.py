"""CLI commands of the bundle subpackage: ``bundle build``, ``bundle verify``, ``bundle inspect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.cliutil import home_of

bundle_app = typer.Typer(help="Bundles: a promoted detector with its policies, hashed.", no_args_is_help=True)

BundleDir = Annotated[Path, typer.Argument(help="A bundle folder written by `selfheal bundle build`.")]
Strict = Annotated[
    bool, typer.Option("--strict", help="Treat version warnings (pyod, sklearn, ...) as errors.")
]
Digest = Annotated[
    str | None, typer.Option("--digest", help="Expected sha256 of manifest.json (pins the exact bundle).")
]


@bundle_app.command("build")
def build(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", help="Registry URI: models:/NAME@champion or models:/NAME/3.")
    ],
    rules: Annotated[
        Path, typer.Option("--rules", help="A policy file or a folder of policies (with topology.yaml).")
    ],
    targets: Annotated[
        Path | None,
        typer.Option("--targets", help="Targets file (default: targets.yaml beside the policies, if any)."),
    ] = None,
    topology: Annotated[
        Path | None,
        typer.Option("--topology", help="Topology file (default: topology.yaml beside the policies)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Bundle folder (default: HOME/bundles/NAME-vVERSION)."),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite in home)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle folder.")] = False,
) -> None:
    """Resolve the model alias to a fixed version and write detector, policies and a hashed manifest.

    Example: selfheal bundle build --model models:/latency@champion --rules rules/ -o bundles/latency
    """
    from engine.bundle.build import build_bundle
    from engine.tracking.registry import resolve_tracking_uri

    home = home_of(ctx)
    result = build_bundle(
        model,
        rules,
        tracking_uri=resolve_tracking_uri(home, tracking_uri),
        output=output,
        bundles_dir=home.bundles,
        targets=targets,
        topology=topology,
        force=force,
    )
    m = result.manifest
    source = f" (alias {m['model']['alias']})" if m["model"]["alias"] else ""
    typer.echo(f"built {result.version} at {result.path}")
    typer.echo(
        f"model    {m['model']['name']} version {m['model']['version']}{source}, run {m['model']['run_id']}"
    )
    typer.echo(f"policies {len(m['policies']['policies'])} ({m['policies']['fingerprint'][:12]})")
    typer.echo(f"files    {len(m['files'])} hashed in manifest.json")
    typer.echo(f"digest   {result.digest}")


@bundle_app.command("verify")
def verify(
    path: BundleDir,
    strict: Strict = False,
    digest: Digest = None,
    load: Annotated[
        bool,
        typer.Option(
            "--load",
            help="After the checks pass, also load it: unpickle, replay the probe, compile policies.",
        ),
    ] = False,
) -> None:
    """Check every file's sha256 (nothing missing, nothing extra) and version compatibility; exit 0 or 2.

    Without --load nothing is unpickled, so it is safe on a bundle you do not trust yet.

    Example: selfheal bundle verify .selfheal/bundles/latency-v3 --digest 3f2a...
    """
    from engine.bundle.load import load_bundle, verify_bundle
    from engine.errors import BundleError

    report = verify_bundle(path, strict=strict, digest=digest)
    typer.echo(f"bundle {report.version} at {report.path}")
    typer.echo(f"digest {report.digest}")
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for error in report.errors:
        typer.echo(f"error: {error}", err=True)
    if report.errors:
        typer.echo(f"verify: FAILED ({len(report.errors)} error(s))", err=True)
        raise typer.Exit(2)
    typer.echo(f"files  {report.n_files} verified, no extra files")
    if load:
        try:
            bundle = load_bundle(path, strict=strict, digest=digest)
        except BundleError as exc:
            typer.echo(f"error: {exc}", err=True)
            typer.echo("verify: FAILED (load)", err=True)
            raise typer.Exit(2) from exc
        typer.echo(
            f"load   OK: probe scores reproduced, {len(bundle.compiled.index)} durable-rules rules identical"
        )
    typer.echo(f"verify: OK ({len(report.warnings)} warning(s))")


@bundle_app.command("inspect")
def inspect(
    path: BundleDir,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the manifest and the integrity check as JSON.")
    ] = False,
) -> None:
    """Print what is inside: model, detector, threshold, features, policies and rules, targets, versions.

    Reads JSON and YAML only (never unpickles); integrity is checked and shown, not enforced.

    Example: selfheal bundle inspect .selfheal/bundles/latency-v3
    """
    from engine.bundle.load import verify_bundle

    report = verify_bundle(path)
    if as_json:
        doc = {
            "path": str(report.path),
            "version": report.version,
            "digest": report.digest,
            "ok": report.ok,
            "errors": report.errors,
            "warnings": report.warnings,
            "manifest": report.manifest,
        }
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    for line in _describe(report):
        typer.echo(line)


def _describe(report: Any) -> list[str]:
    from engine.bundle.manifest import environment

    m = report.manifest
    model, det, pol = m["model"], m["detector"], m["policies"]
    integrity = f"OK ({report.n_files} files)" if report.ok else f"FAILED: {'; '.join(report.errors)}"
    thr = det["threshold_policy"]
    thr_text = ", ".join(f"{k}={v}" for k, v in sorted(thr.items()))
    lines = [
        f"bundle      {report.version}",
        f"path        {report.path}",
        f"digest      {report.digest}",
        f"created     {m.get('created_at')}",
        f"integrity   {integrity}",
        f"model       {model['name']} version {model['version']} (resolved from {model['requested']}), "
        f"run {model['run_id']}, tracking {model['tracking_uri']}",
        f"detector    {det['name']} {json.dumps(det['params'], sort_keys=True)}"
        f"  calibration {det.get('calibration') or 'default'}",
        f"threshold   {det['threshold']:.6g} ({thr_text}); trained on {det.get('n_train')} rows",
        f"features    {len(det['feature_names'])} every {det['interval_s']:g}s: "
        f"{', '.join(det['feature_names'])}",
        f"policies    {len(pol['policies'])} policies, fingerprint {pol['fingerprint'][:12]}, "
        f"services {', '.join(pol['services'])}",
    ]
    for p in pol["policies"]:
        lines.append(f"  {p['name']} v{p['version']} ({p['file']})")
        for r in p["rules"]:
            gate = ", approval" if r["approval"] else ""
            lines.append(
                f"    - {r['id']}: {r['action']} (risk {r['risk']}{gate}) on {', '.join(r['services'])}"
            )
    lines.append(f"targets     {_targets_text(report)}")
    here = environment()
    lines.append("versions    built with / here")
    for key, built in sorted(m["environment"].items()):
        now = here.get(key)
        mark = "" if now == built else f"  <- here {now}"
        lines.append(f"  {key:<14} {built}{mark}")
    for warning in report.warnings:
        lines.append(f"warning     {warning}")
    lines.append("files")
    for rel, entry in sorted(m["files"].items()):
        lines.append(f"  {entry['sha256'][:16]}  {entry['size']:>9}  {rel}")
    return lines


def _targets_text(report: Any) -> str:
    from engine.bundle.manifest import TARGETS_FILE
    from engine.errors import EngineError

    if TARGETS_FILE not in report.manifest["files"]:
        return "none (actions use the default simulator backend)"
    from engine.actions.targets import load_targets_text

    data = report.contents.get(TARGETS_FILE)
    if data is None:  # listed but failed its hash check: do not parse what was not verified
        return f"{TARGETS_FILE}: not verified (see integrity)"
    try:
        config = load_targets_text(data, source=report.path / TARGETS_FILE)
    except EngineError as exc:
        return f"{TARGETS_FILE}: unreadable ({exc.message.splitlines()[0]})"
    per = ", ".join(f"{s}={config.target(s).backend}" for s in sorted(config.services))
    return f"{TARGETS_FILE}: default {config.defaults.backend or 'simulator'}" + (f"; {per}" if per else "")


def register(app: typer.Typer) -> None:
    """Add this subpackage's commands to the root app."""
    app.add_typer(bundle_app, name="bundle")
