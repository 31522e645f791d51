"""CLI commands of the bundle subpackage: ``bundle keygen|build|sign|verify|inspect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.cliutil import home_of

bundle_app = typer.Typer(
    help="Bundles: a promoted detector with its policies, hashed and signed.", no_args_is_help=True
)

BundleDir = Annotated[Path, typer.Argument(help="A bundle folder written by `selfheal bundle build`.")]
Strict = Annotated[
    bool, typer.Option("--strict", help="Treat version warnings (pyod, sklearn, ...) as errors.")
]
Digest = Annotated[
    str | None, typer.Option("--digest", help="Expected sha256 of manifest.json (pins the exact bundle).")
]
KeyOpt = Annotated[
    Path | None,
    typer.Option("--key", help="Private signing key (default: HOME/keys/bundle-signing.key)."),
]
TrustedKeys = Annotated[
    list[Path] | None,
    typer.Option(
        "--trusted-key",
        help="Public key (KEY.pub) or folder of them to trust, besides SELFHEAL_TRUSTED_KEYS and "
        "HOME/keys/trusted/. Repeatable.",
    ),
]
AllowUnsigned = Annotated[
    bool,
    typer.Option(
        "--allow-unsigned", help="Report an unsigned or untrusted bundle as a warning (local development)."
    ),
]


def _trust(ctx: typer.Context, trusted: list[Path] | None, allow_unsigned: bool = False) -> Any:
    from engine.bundle.signing import Trust

    return Trust.for_home(home_of(ctx), trusted or (), allow_unsigned=allow_unsigned)


def _signing_key(ctx: typer.Context, key: Path | None) -> Path:
    from engine.bundle.signing import KEY_FILE

    return key or home_of(ctx).keys / KEY_FILE


@bundle_app.command("keygen")
def keygen(
    ctx: typer.Context,
    key: KeyOpt = None,
    trust: Annotated[
        bool, typer.Option("--trust/--no-trust", help="Also pin the public key in HOME/keys/trusted/.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key (rotation).")] = False,
) -> None:
    """Make an Ed25519 signing key: KEY (private, mode 0600) and KEY.pub (the line engines pin).

    Keep KEY out of bundles and repositories (a CI secret); give KEY.pub to every engine host.

    Example: selfheal bundle keygen --key ~/.selfheal-keys/release.key
    """
    from engine.bundle.signing import generate_key, trust_key

    path = _signing_key(ctx, key)
    public, kid = generate_key(path, force=force)
    typer.echo(f"key      {path} (private: keep it secret, never in a bundle)")
    typer.echo(f"public   {public} (key id {kid})")
    if trust:
        typer.echo(f"trusted  {trust_key(public, home_of(ctx))}")
    else:
        typer.echo(
            f"pin it   on each engine host: copy {public.name} into HOME/keys/trusted/, or "
            "--trusted-key / trusted_keys / SELFHEAL_TRUSTED_KEYS"
        )


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
    key: Annotated[
        Path | None, typer.Option("--key", help="Sign the bundle with this private key (bundle keygen).")
    ] = None,
    diagnosis: Annotated[
        Path | None,
        typer.Option(
            "--diagnosis",
            help="Fault-kind model to ship (selfheal diagnosis train; default: the shipped one).",
        ),
    ] = None,
) -> None:
    """Resolve the model alias to a fixed version and write detector, policies, the diagnosis model
    and a hashed manifest.

    With --key the manifest is signed; engines refuse unsigned bundles unless told otherwise.

    Example: selfheal bundle build --model models:/latency@champion --rules rules/ --key ci/release.key
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
        signing_key=key,
        diagnosis=diagnosis,
    )
    m = result.manifest
    source = f" (alias {m['model']['alias']})" if m["model"]["alias"] else ""
    typer.echo(f"built {result.version} at {result.path}")
    typer.echo(
        f"model    {m['model']['name']} version {m['model']['version']}{source}, run {m['model']['run_id']}"
    )
    typer.echo(f"policies {len(m['policies']['policies'])} ({m['policies']['fingerprint'][:12]})")
    typer.echo(f"diagnosis {m['diagnosis']['version']}")
    typer.echo(f"files    {len(m['files'])} hashed in manifest.json")
    typer.echo(f"digest   {result.digest}")
    signed = (
        f"by key {result.signed_by}" if result.signed_by else "NO (pass --key, or `selfheal bundle sign`)"
    )
    typer.echo(f"signed   {signed}")


@bundle_app.command("sign")
def sign(ctx: typer.Context, path: BundleDir, key: KeyOpt = None) -> None:
    """Sign a bundle's manifest.json (writes DIR/manifest.sig); its hashes are checked first.

    Example: selfheal bundle sign .selfheal/bundles/latency-v3 --key ci/release.key
    """
    from engine.bundle.load import verify_bundle
    from engine.bundle.manifest import MANIFEST_NAME
    from engine.bundle.signing import Trust, load_private_key, sign_manifest

    private = load_private_key(_signing_key(ctx, key))
    report = verify_bundle(path, trust=Trust(allow_unsigned=True))  # sign only what is intact
    if report.errors:
        for error in report.errors:
            typer.echo(f"error: {error}", err=True)
        typer.echo("sign: refused (the bundle does not match its manifest)", err=True)
        raise typer.Exit(2)
    kid = sign_manifest(report.path, private, (report.path / MANIFEST_NAME).read_bytes())
    typer.echo(f"signed {report.version} at {report.path} with key {kid}")


@bundle_app.command("verify")
def verify(
    ctx: typer.Context,
    path: BundleDir,
    strict: Strict = False,
    digest: Digest = None,
    trusted: TrustedKeys = None,
    allow_unsigned: AllowUnsigned = False,
    load: Annotated[
        bool,
        typer.Option(
            "--load",
            help="After the checks pass, also load it: the detector, the probe replay, the policies.",
        ),
    ] = False,
) -> None:
    """Check the signature (a trusted key), every file's sha256 and version compatibility; exit 0 or 2.

    Without --load no model is loaded, so it is safe on a bundle you do not trust yet.

    Example: selfheal bundle verify .selfheal/bundles/latency-v3 --trusted-key release.key.pub
    """
    from engine.bundle.load import load_bundle, verify_bundle
    from engine.errors import BundleError

    trust = _trust(ctx, trusted, allow_unsigned)
    report = verify_bundle(path, strict=strict, digest=digest, trust=trust)
    typer.echo(f"bundle {report.version} at {report.path}")
    typer.echo(f"digest {report.digest}")
    if report.signature is not None and report.signature.trusted:
        typer.echo(report.signature.detail)
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
            bundle = load_bundle(path, strict=strict, digest=digest, trust=trust)
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
    ctx: typer.Context,
    path: BundleDir,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the manifest and the integrity check as JSON.")
    ] = False,
) -> None:
    """Print what is inside: model, detector, threshold, features, policies and rules, targets, versions.

    Reads JSON and YAML only (never loads a model); signature and integrity are checked and shown, not
    enforced (keys trusted: SELFHEAL_TRUSTED_KEYS and HOME/keys/trusted/).

    Example: selfheal bundle inspect .selfheal/bundles/latency-v3
    """
    from engine.bundle.load import verify_bundle

    report = verify_bundle(path, trust=_trust(ctx, None))
    if as_json:
        doc = {
            "path": str(report.path),
            "version": report.version,
            "digest": report.digest,
            "ok": report.ok,
            "errors": report.errors,
            "warnings": report.warnings,
            "signature": {"status": report.signature.status, "key_id": report.signature.key_id},
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
        f"signature   {report.signature.status}: {report.signature.detail}",
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
    diagnosis = m.get("diagnosis")
    lines.append(
        f"diagnosis   {diagnosis['version']} ({diagnosis['file']})"
        if diagnosis
        else "diagnosis   none in the bundle: the engine uses its shipped model"
    )
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
