"""Verify and load a bundle, refusing anything that is not signed by a trusted key before loading it.

Order matters and is the point of this module:

1. the signature (``manifest.sig``) over the raw bytes of manifest.json, under the trusted keys,
   before the manifest is even parsed: it covers everything the manifest says (model, threshold,
   versions, policies summary, every file's sha256 and size);
2. the manifest's fields, then the sha256 of every file (nothing missing, nothing extra), then the
   environment rules;
3. only if all passed: the detector built from the very bytes that were hashed
   (``engine.detectors.artifact``: JSON and skops, which runs no code), then the probe replay, then
   the policies, topology and targets (parsed from the same verified bytes, never re-read from
   disk; policies recompiled and compared with the shipped durable-rules JSON), and the fault-kind
   model the engine diagnoses with. A bundle built before bundles carried that model loads with
   this selfheal's shipped model and a warning saying so (the journal names the model's version
   on every diagnosis, so which one ran stays traceable).

A bundle that is unsigned, signed by an unknown key or changed after signing is refused at step 1
unless ``Trust.allow_unsigned`` (local development; logged as a warning). Nothing here imports
MLflow: a bundle runs on a host that has no tracking server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.bundle.manifest import (
    COMPILED_FILE,
    DETECTOR_DIR,
    DIAGNOSIS_FILE,
    MANIFEST_NAME,
    RULES_DIR,
    TARGETS_FILE,
    bundle_version,
    check_environment,
    check_files,
    parse_manifest,
    read_manifest_bytes,
    sha256_bytes,
)
from engine.bundle.probe import probe_mismatch
from engine.bundle.signing import SignatureCheck, Trust, check_signature, refusal_hint, require
from engine.errors import BundleError, EngineError

if TYPE_CHECKING:
    from engine.actions.targets import TargetsConfig
    from engine.detectors.stream import StreamDetector
    from engine.diagnosis import KindModel
    from engine.policy import CompiledPolicySet, PolicySet
    from engine.policy.topology import Topology

logger = logging.getLogger(__name__)

DETECTOR_FILE = f"{DETECTOR_DIR}/detector.json"
NO_DIAGNOSIS = (
    f"{DIAGNOSIS_FILE}: none (built before bundles carried their diagnosis model): the engine "
    "diagnoses with this selfheal's shipped model; rebuild the bundle to fix the model it runs"
)


@dataclass
class VerifyReport:
    """What ``verify_bundle`` found; ``ok`` when there are no errors (warnings are allowed)."""

    path: Path
    digest: str
    version: str
    manifest: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    signature: SignatureCheck | None = None
    n_files: int = 0
    contents: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Bundle:
    """A verified, loaded bundle: what ``selfheal run BUNDLE`` runs."""

    path: Path
    manifest: dict[str, Any]
    digest: str
    version: str
    detector: StreamDetector
    policies: PolicySet
    compiled: CompiledPolicySet
    topology: Topology
    targets: TargetsConfig | None
    diagnosis: KindModel
    warnings: tuple[str, ...] = ()

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def model_version(self) -> str:
        return str(self.manifest["model"]["version"])

    @property
    def detector_version(self) -> str:
        """``NAME/vN``: the registry version of the detector (journaled with every event)."""
        return f"{self.model_name}/v{self.model_version}"


def verify_bundle(
    path: Path | str, *, strict: bool = False, digest: str | None = None, trust: Trust | None = None
) -> VerifyReport:
    """Check the signature, hashes (every listed file, nothing extra, nothing missing) and compatibility.

    Reads bytes and JSON only; never loads the models. ``trust`` holds the keys a signature may be
    made with (default: ``Trust.load()``, i.e. SELFHEAL_TRUSTED_KEYS); an unsigned or untrusted
    bundle is an error, or a warning with ``trust.allow_unsigned``. ``digest`` pins the sha256 of
    manifest.json. Raises BundleError only when there is no readable manifest; everything else is
    in the report.
    """
    from engine.detectors.artifact import FORMAT_VERSION as DETECTOR_FORMAT

    folder = Path(path)
    trust = trust if trust is not None else Trust.load()
    raw = read_manifest_bytes(folder)
    signature = check_signature(folder, raw, trust)  # on the raw bytes, before they are parsed
    manifest = parse_manifest(folder, raw)
    actual = sha256_bytes(raw)
    report = VerifyReport(folder, actual, bundle_version(manifest, actual), manifest, signature=signature)
    if not signature.trusted:
        message = f"{signature.detail} ({refusal_hint(signature)})"
        (report.warnings if trust.allow_unsigned else report.errors).append(message)
    if digest is not None and digest.strip().lower() != actual:
        report.errors.append(f"{MANIFEST_NAME}: digest {actual} is not the pinned {digest.strip()}")
    files = check_files(folder, manifest)
    report.errors.extend(files.problems)
    report.contents = files.contents
    report.n_files = len(manifest["files"])
    for required in (DETECTOR_FILE, COMPILED_FILE, f"{RULES_DIR}/topology.yaml"):
        if required not in manifest["files"]:
            report.errors.append(f"{required}: not in the manifest (every bundle has one)")
    if manifest.get("diagnosis") is not None and DIAGNOSIS_FILE not in manifest["files"]:
        report.errors.append(f"{DIAGNOSIS_FILE}: named by the manifest's diagnosis section but not listed")
    elif manifest.get("diagnosis") is None:
        report.warnings.append(NO_DIAGNOSIS)
    fmt = manifest.get("detector", {}).get("format_version")
    if fmt != DETECTOR_FORMAT:
        report.errors.append(
            f"{DETECTOR_FILE}: detector format {fmt!r}, this selfheal reads {DETECTOR_FORMAT}"
        )
    errors, warnings = check_environment(manifest, strict=strict)
    report.errors.extend(errors)
    report.warnings.extend(warnings)
    return report


def load_bundle(
    path: Path | str, *, strict: bool = False, digest: str | None = None, trust: Trust | None = None
) -> Bundle:
    """Verify, then load the detector, policies, topology and targets. Raises BundleError if anything
    fails; the detector is only read after the signature and every hash matched (module docstring).

    ``trust``: the keys to accept (default ``Trust.load()``: SELFHEAL_TRUSTED_KEYS). Commands that
    know the home pass ``Trust.for_home(home, ...)``, which adds ``HOME/keys/trusted/``.
    """
    folder = Path(path)
    trust = trust if trust is not None else Trust.load()
    # the signature alone first: an untrusted manifest is not even parsed when loading
    require(check_signature(folder, read_manifest_bytes(folder), trust), trust, folder)
    report = verify_bundle(folder, strict=strict, digest=digest, trust=trust)
    if not report.ok:
        raise BundleError(
            f"{report.path}: refusing to load bundle {report.version}: " + "; ".join(report.errors),
            hint=f"run `selfheal bundle verify {report.path}`; rebuild the bundle rather than editing it",
        )
    for warning in report.warnings:
        logger.warning("bundle %s: %s", report.version, warning)
    detector = _load_detector(report)
    mismatch = probe_mismatch(detector, report.manifest["detector"]["probe"])
    if mismatch:
        raise BundleError(
            f"{report.path}: {mismatch}; the detector does not behave here as it did when built",
            hint="run with the versions in the manifest (selfheal bundle inspect) or rebuild the bundle here",
        )
    policies, compiled = _policies(report)
    from engine.actions.targets import TargetsConfig, load_targets_text
    from engine.policy.targets import check_policies

    targets = None
    if TARGETS_FILE in report.contents:
        # the verified bytes, not a second read of the file (which could have been swapped since)
        targets = load_targets_text(report.contents[TARGETS_FILE], source=report.path / TARGETS_FILE)
    problems = check_policies(targets or TargetsConfig(), policies, report.path / TARGETS_FILE)
    if problems:
        raise BundleError(
            f"{report.path}: policies and targets disagree: " + "; ".join(map(str, problems)),
            hint="rebuild the bundle",
        )
    diagnosis = _load_diagnosis(report)
    logger.info("loaded bundle %s from %s", report.version, report.path)
    return Bundle(
        path=report.path,
        manifest=report.manifest,
        digest=report.digest,
        version=report.version,
        detector=detector,
        policies=policies,
        compiled=compiled,
        topology=policies.topology,
        targets=targets,
        diagnosis=diagnosis,
        warnings=tuple(report.warnings),
    )


def _load_diagnosis(report: VerifyReport) -> KindModel:
    """The bundle's fault-kind model from its verified bytes; the shipped one for older bundles."""
    import json

    from engine.diagnosis import KindModel, shipped_model

    raw = report.contents.get(DIAGNOSIS_FILE)
    if raw is None:
        return shipped_model()  # NO_DIAGNOSIS is among the report's warnings, logged above
    source = str(report.path / DIAGNOSIS_FILE)
    try:
        return KindModel.from_dict(json.loads(raw), source=source)
    except (ValueError, EngineError) as exc:
        raise BundleError(
            f"{source}: cannot load the diagnosis model: {getattr(exc, 'message', exc)}",
            hint="rebuild the bundle with this selfheal (selfheal bundle build)",
        ) from exc


def _load_detector(report: VerifyReport) -> StreamDetector:
    from engine.detectors.artifact import from_files

    prefix = f"{DETECTOR_DIR}/"
    files = {rel[len(prefix) :]: data for rel, data in report.contents.items() if rel.startswith(prefix)}
    try:
        return from_files(files, source=str(report.path / DETECTOR_DIR))  # the verified bytes
    except EngineError as exc:
        raise BundleError(
            f"{report.path / DETECTOR_DIR}: cannot load the detector: {exc.message}",
            hint="load it with the library versions recorded in the manifest, or rebuild the bundle",
        ) from exc


def _policies(report: VerifyReport) -> tuple[PolicySet, CompiledPolicySet]:
    """Load the source policies and check they compile, here, to the shipped durable-rules JSON.

    Parsed from the verified bytes (``report.contents``): the folder is never read again.
    """
    from engine.policy import compile_policies, load_policies

    rules_dir = report.path / RULES_DIR
    prefix = f"{RULES_DIR}/"
    files = {
        rel[len(prefix) :]: data
        for rel, data in report.contents.items()
        if rel.startswith(prefix) and "/" not in rel[len(prefix) :]
    }
    try:
        policy_set = load_policies(rules_dir, contents=files)
    except EngineError as exc:
        raise BundleError(
            f"{rules_dir}: policies do not load here: {exc}", hint="rebuild the bundle"
        ) from exc
    recorded = report.manifest.get("policies", {}).get("fingerprint")
    if policy_set.fingerprint != recorded:
        raise BundleError(
            f"{rules_dir}: policy fingerprint {policy_set.fingerprint[:12]} is not the recorded "
            f"{str(recorded)[:12]} (the bundle's rules differ from the ones it was built from)",
            hint="rebuild the bundle",
        )
    compiled = compile_policies(policy_set)
    if compiled.to_json() != report.contents[COMPILED_FILE].decode():
        raise BundleError(
            f"{report.path / COMPILED_FILE}: this selfheal compiles the bundle's policies differently "
            "from the selfheal that built it",
            hint="rebuild the bundle with this selfheal version (its rules must be reviewed again)",
        )
    return policy_set, compiled
