"""Build a bundle: a promoted detector fixed to one model version, its policies, and a hashed manifest.

Why resolve the alias first: ``champion`` moves; a bundle must keep running the version that was
champion when it was built, so the alias is resolved once to ``NAME/VERSION`` and only that fixed
version is downloaded (the alias it came from is recorded for the reader). The bundle is written
into a temporary sibling folder and renamed into place at the end, so a failed build never leaves a
half-written bundle that could be mistaken for a good one.

Layout::

    DIR/manifest.json               provenance, versions, policies summary, probe, sha256 of every file
    DIR/manifest.sig                Ed25519 signature over manifest.json (with ``signing_key``)
    DIR/detector/detector.json      the stream detector (MLflow model's artifacts/detector/): its
                                    config (roles, features, model, post-processing) and what fit learned
    DIR/detector/models/*.skops     each role's fitted model (skops: loading runs no code)
    DIR/rules/topology.yaml, *.yaml the source policies, loadable with ``load_policies(DIR/rules)``
    DIR/rules/targets.yaml          the targets file (optional)
    DIR/compiled/policies.json      the durable-rules rulesets (CompiledPolicySet.to_json())
    DIR/diagnosis/kind_model.json   the fault-kind model the engine diagnoses with (default: the
                                    shipped one), so a bundle runs the diagnosis it was assessed with
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from engine.bundle.manifest import (
    COMPILED_FILE,
    DETECTOR_DIR,
    DIAGNOSIS_FILE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    RULES_DIR,
    TARGETS_FILE,
    bundle_version,
    environment,
    file_entries,
    sha256_bytes,
)
from engine.bundle.probe import make_probe
from engine.errors import BundleError, SpecError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """A registry URI taken apart: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""

    name: str
    alias: str | None
    version: str | None

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        body = uri.removeprefix("models:/") if uri.startswith("models:/") else None
        if body:
            name, at, alias = body.partition("@")
            if at and name and alias and "/" not in name:
                return cls(name, alias, None)
            name, slash, version = body.partition("/")
            if slash and name and version.isdigit():
                return cls(name, None, version)
        raise BundleError(
            f"--model {uri!r} is not a registry URI",
            hint="use models:/NAME@champion (or models:/NAME/VERSION for a fixed version)",
        )


@dataclass(frozen=True)
class BuildResult:
    path: Path
    digest: str
    version: str
    manifest: dict[str, Any]
    signed_by: str | None = None  # key id of the signature, None when built unsigned


def default_output(bundles_dir: Path, name: str, version: str) -> Path:
    """``<home>/bundles/<name>-v<version>``: the default folder of a bundle."""
    return bundles_dir / f"{name}-v{version}"


def redact_uri(uri: str) -> str:
    """A tracking URI without credentials (``https://user:pass@host`` -> ``https://***@host``)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def resolve_model(model_uri: str, *, tracking_uri: str) -> dict[str, Any]:
    """The fixed model version behind ``model_uri``: name, version, alias, run id, source."""
    from engine.tracking.registry import resolve_version

    ref = ModelRef.parse(model_uri)
    mv = resolve_version(model_uri, tracking_uri=tracking_uri)
    return {
        "requested": model_uri,
        "name": str(mv.name),
        "version": str(mv.version),
        "alias": ref.alias,
        "run_id": str(mv.run_id or ""),
        "source": str(mv.source or ""),
        "tracking_uri": redact_uri(tracking_uri),
        "mlflow": metadata.version("mlflow"),
        "registered_at": _ms_to_iso(getattr(mv, "creation_timestamp", None)),
    }


def build_bundle(
    model_uri: str,
    rules: Path | str,
    *,
    tracking_uri: str,
    output: Path | str | None = None,
    bundles_dir: Path | None = None,
    targets: Path | str | None = None,
    topology: Path | str | None = None,
    force: bool = False,
    signing_key: Path | str | None = None,
    diagnosis: Path | str | None = None,
) -> BuildResult:
    """Resolve ``model_uri``, copy detector and policies, write the manifest; return where and what.

    ``rules`` is a policy folder (with topology.yaml) or one policy file. ``targets`` defaults to
    the ``targets.yaml`` beside the policies when there is one. ``output`` defaults to
    ``bundles_dir/<name>-v<version>``; an existing folder is replaced only with ``force``.
    ``signing_key`` (a private key file, kept outside the bundle) signs the manifest; the engine
    refuses unsigned bundles unless told otherwise, so production bundles are built with one.
    ``diagnosis`` is the fault-kind model file to ship (default: the shipped
    ``experiments/diagnosis/kind_model.json``).
    """
    from engine.actions.targets import TargetsConfig, load_targets, targets_for_policy
    from engine.bundle.signing import load_private_key, sign_manifest
    from engine.diagnosis import KindModel, shipped_model_path
    from engine.policy import compile_policies, load_policies
    from engine.policy.loader import policy_files
    from engine.policy.targets import check_policies
    from engine.policy.topology import default_topology_path

    private = load_private_key(signing_key) if signing_key is not None else None  # fail before work
    diagnosis_src = Path(diagnosis) if diagnosis is not None else shipped_model_path()
    kind_model = KindModel.load(diagnosis_src)  # a bad model fails the build, not the engine
    rules = Path(rules)
    checked = load_policies(rules, topology=topology)  # errors name the user's files, not the copies
    topo_src = Path(topology) if topology else default_topology_path(rules)
    targets_src = Path(targets) if targets else targets_for_policy(rules)
    if targets is not None and not targets_src.is_file():
        raise BundleError(f"--targets {targets_src}: no such file", hint="give the targets YAML file")
    config = load_targets(targets_src) if targets_src.is_file() else TargetsConfig()
    problems = check_policies(config, checked, targets_src)
    if problems:
        raise SpecError(problems, hint="fix the policies or the targets file, then build again")
    if not targets_src.is_file():
        targets_src = None

    model = resolve_model(model_uri, tracking_uri=tracking_uri)
    if output is None:
        if bundles_dir is None:
            raise BundleError("no output folder", hint="pass -o DIR")
        output = default_output(bundles_dir, model["name"], model["version"])
    out = Path(output).resolve()
    if out.exists() and not force:
        raise BundleError(f"{out} already exists", hint="pass --force to replace it, or -o another folder")
    if out.exists() and not (out.is_dir() and ((out / MANIFEST_NAME).is_file() or not any(out.iterdir()))):
        raise BundleError(
            f"{out} exists and is not a bundle; --force only replaces bundles or empty folders",
            hint="choose another -o folder",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.building-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        detector = _copy_detector(model, staging / DETECTOR_DIR, tracking_uri=tracking_uri)
        rules_dir = staging / RULES_DIR
        rules_dir.mkdir()
        for file in policy_files(rules):
            shutil.copyfile(file, rules_dir / file.name)
        shutil.copyfile(topo_src, rules_dir / "topology.yaml")
        if targets_src is not None:
            shutil.copyfile(targets_src, staging / TARGETS_FILE)
        policy_set = load_policies(rules_dir)
        compiled = compile_policies(policy_set)
        (staging / COMPILED_FILE).parent.mkdir(parents=True)
        (staging / COMPILED_FILE).write_text(compiled.to_json())
        (staging / DIAGNOSIS_FILE).parent.mkdir(parents=True)
        shutil.copyfile(diagnosis_src, staging / DIAGNOSIS_FILE)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            "model": model,
            "detector": detector,
            "policies": _policies_summary(policy_set, rules, targets_src),
            "diagnosis": {
                "version": kind_model.version,
                "file": DIAGNOSIS_FILE,
                "source": str(diagnosis_src),
            },
            "environment": environment(),
            "files": file_entries(staging),
        }
        raw = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        (staging / MANIFEST_NAME).write_bytes(raw)
        signed_by = sign_manifest(staging, private, raw) if private is not None else None
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    digest = sha256_bytes(raw)
    version = bundle_version(manifest, digest)
    logger.info("built bundle %s at %s (digest %s, signed by %s)", version, out, digest, signed_by)
    return BuildResult(out, digest, version, manifest, signed_by)


def _copy_detector(model: dict[str, Any], dest: Path, *, tracking_uri: str) -> dict[str, Any]:
    """Download the fixed model version, copy its detector folder, describe it and record the probe."""
    from engine.detectors.artifact import DETECTOR_JSON, FORMAT_VERSION, load_detector_dir
    from engine.tracking.model import detector_dir
    from engine.tracking.registry import download_model

    fixed = f"models:/{model['name']}/{model['version']}"
    with tempfile.TemporaryDirectory(prefix="selfheal-bundle-") as tmp:
        local = download_model(fixed, tracking_uri=tracking_uri, dst=tmp)
        src = detector_dir(local)
        if not (src / DETECTOR_JSON).is_file():
            raise BundleError(
                f"{fixed} has no selfheal detector (artifacts/detector/{DETECTOR_JSON} missing)",
                hint="bundle a model logged by `selfheal experiment run` (tracking.model.log_detector)",
            )
        shutil.copytree(src, dest)
    detector = load_detector_dir(dest)  # from our own registry, before the bundle exists
    described = detector.describe()
    return {
        "name": detector.detector,
        "params": described["params"],
        "calibration": described["calibration"],
        "threshold": detector.threshold_,
        "threshold_policy": described["threshold_policy"],
        "feature_names": detector.feature_names,
        "interval_s": detector.interval_s,
        "n_train": described["n_train"],
        "groups": described["groups"],
        "format_version": FORMAT_VERSION,
        "probe": make_probe(detector),
    }


def _policies_summary(policy_set: Any, source: Path, targets_src: Path | None) -> dict[str, Any]:
    return {
        "source": str(source),
        "targets_source": str(targets_src) if targets_src else None,
        "fingerprint": policy_set.fingerprint,
        "compiled": COMPILED_FILE,
        "policies": [
            {
                "name": p.policy,
                "version": str(p.version),
                "file": f"{RULES_DIR}/{Path(p.source).name}",
                "rules": [
                    {
                        "id": b.id,
                        "action": b.rule.then.action,
                        "risk": str(b.risk),
                        "services": list(b.services),
                        "approval": b.requires_approval,
                    }
                    for b in policy_set.rules
                    if b.policy.policy == p.policy
                ],
            }
            for p in policy_set.policies
        ],
        "services": policy_set.topology.names,
    }


def _ms_to_iso(ms: Any) -> str | None:
    if not ms:
        return None
    return (
        datetime.fromtimestamp(int(ms) / 1000, UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    )
