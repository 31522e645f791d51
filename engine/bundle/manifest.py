"""The bundle manifest: what is inside, where it came from, and the sha256 of every file.

Why a manifest of hashes, checked before anything is parsed: the detector's models are data (skops,
which builds only the types a detector is made of), but a bundle is still what the engine acts on.
``check_files`` compares the folder with the manifest (every listed file present with its size and
sha256, no unlisted file, no symlink, no path escaping the folder) and returns the verified bytes,
so the caller loads exactly the bytes that were hashed (no window between check and use). The
hashes only bind the files to the manifest; what binds the manifest to its maker is the Ed25519
signature beside it (``manifest.sig``, ``engine.bundle.signing``), checked on the raw bytes of
manifest.json before they are even parsed. Its sha256 (the bundle *digest*) can additionally be
pinned (``selfheal bundle verify DIR --digest SHA``) to accept one exact bundle.

Compatibility rules (``check_environment``), decided here and documented in the README:

- Python major.minor differs: error (saved numpy/scikit-learn state is only supported on the
  interpreter and wheels it was written with);
- numpy major differs: error (numpy 1 and 2 arrays and models are not interchangeable);
- pyod, scikit-learn, numpy minor/patch, scipy, selfheal or durable-rules differ: warning, because
  ``load_bundle`` replays the recorded probe rows and refuses the bundle if the scores differ, which
  is a stronger check than any version rule; ``strict`` turns these warnings into errors;
- a bundle format or detector format other than this selfheal's: error.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine import __version__
from engine.specs import problems_from, read_yaml

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
UNHASHED = (MANIFEST_NAME, SIGNATURE_NAME)
"""The two files not listed in the manifest: itself, and the signature over it."""
FORMAT = "selfheal-bundle"
FORMAT_VERSION = 2

DETECTOR_DIR = "detector"
RULES_DIR = "rules"
COMPILED_FILE = "compiled/policies.json"
TARGETS_FILE = f"{RULES_DIR}/targets.yaml"
DIAGNOSIS_FILE = "diagnosis/kind_model.json"
REQUIRED_SECTIONS = ("model", "detector", "policies", "environment", "files")

#: Distributions whose versions are recorded; the detector needs the first ones at load time.
TRACKED = ("numpy", "scipy", "scikit-learn", "pyod", "polars", "pydantic", "durable-rules")
ERROR_IF_MAJOR_DIFFERS = ("numpy",)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def environment() -> dict[str, str]:
    """Versions of everything that decides whether the saved detector loads and scores the same."""
    out = {
        "selfheal": __version__,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": f"{sys.platform}-{platform.machine()}",
    }
    for dist in TRACKED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def bundle_version(manifest: dict[str, Any], digest: str) -> str:
    """``NAME@vN+sha8``: the model version plus the first 8 hex digits of the bundle digest."""
    model = manifest.get("model", {})
    return f"{model.get('name', '?')}@v{model.get('version', '?')}+{digest[:8]}"


def list_files(folder: Path) -> list[str]:
    """Every file under ``folder`` except the manifest and its signature, as sorted POSIX relative paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            rel = (base / name).relative_to(folder).as_posix()
            if rel not in UNHASHED:
                found.append(rel)
    return sorted(found)


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relpath: {sha256, size}}`` for every file of a bundle being built."""
    return {
        rel: {"sha256": sha256_file(folder / rel), "size": (folder / rel).stat().st_size}
        for rel in list_files(folder)
    }


class _Section(BaseModel):
    """A manifest section: the fields selfheal reads are typed; other keys are kept (newer builds)."""

    model_config = ConfigDict(extra="allow", strict=False)


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str
    size: int = Field(ge=0)


class ModelSection(_Section):
    name: str
    version: str | int
    requested: str
    alias: str | None = None
    run_id: str
    tracking_uri: str


class ProbeSection(_Section):
    rows: list[list[float]]
    raw: list[float]
    scores: list[float]


class DetectorSection(_Section):
    name: str
    params: dict[str, Any]
    threshold: float
    threshold_policy: dict[str, Any]
    feature_names: list[str]
    interval_s: float
    n_train: int | None = None
    format_version: int
    groups: dict[str, Any]
    probe: dict[str, ProbeSection]  # per metric group whose model was fitted on history


class RuleSummary(_Section):
    id: str
    action: str
    risk: str
    services: list[str]
    approval: bool


class PolicySummary(_Section):
    name: str
    version: str
    file: str
    rules: list[RuleSummary]


class PoliciesSection(_Section):
    fingerprint: str
    policies: list[PolicySummary]
    services: list[str]


class DiagnosisSection(_Section):
    version: str
    file: str


class Manifest(_Section):
    """What ``parse_manifest`` checks before anything else looks at a manifest.

    Every field that verify, load and inspect read is here with its type, so a damaged or
    hand-edited manifest fails with the field's path instead of a crash (``.split`` on a number)
    deep inside a command.
    """

    format: Literal["selfheal-bundle"]
    format_version: int
    created_at: str | None = None
    model: ModelSection
    detector: DetectorSection
    policies: PoliciesSection
    environment: dict[str, str]
    files: dict[str, FileEntry]
    diagnosis: DiagnosisSection | None = None  # bundles built before they carried the model: None


def read_manifest_bytes(folder: Path) -> bytes:
    """The bytes of ``folder/manifest.json`` (BundleError when there is no bundle there)."""
    from engine.errors import BundleError

    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a folder", hint="give the folder `selfheal bundle build` wrote")
    if path.is_symlink() or not path.is_file():
        raise BundleError(f"{path}: no manifest", hint="give the folder `selfheal bundle build` wrote")
    return path.read_bytes()


def parse_manifest(folder: Path, raw: bytes) -> dict[str, Any]:
    """The manifest from its bytes, checked against ``Manifest``.

    Any problem is a BundleError naming the field, so ``bundle verify``/``inspect`` exit 2 with a
    clear line. The dict returned is the file's own content (not a re-dump), so ``inspect --json``
    shows exactly what is on disk.
    """
    from engine.errors import BundleError

    path = folder / MANIFEST_NAME
    data, problems = read_yaml(path, raw)  # a .json file: JSON under the spec loader's rules
    if problems:
        raise BundleError("; ".join(map(str, problems)), hint="rebuild the bundle")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{path}: not a selfheal bundle manifest", hint="rebuild the bundle")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {version!r} is not supported "
            f"(this selfheal reads up to {FORMAT_VERSION})",
            hint="upgrade selfheal or rebuild the bundle with this version",
        )
    missing = [key for key in REQUIRED_SECTIONS if not isinstance(data.get(key), dict)]
    if missing:
        raise BundleError(f"{path}: section(s) {', '.join(missing)} missing", hint="rebuild the bundle")
    try:
        Manifest.model_validate(data)
    except ValidationError as exc:
        problems = problems_from(exc, file=str(path), model=Manifest)
        raise BundleError(
            f"{path}: malformed manifest: " + "; ".join(f"{p.path}: {p.message}" for p in problems),
            hint="the manifest was damaged or edited by hand; rebuild it with `selfheal bundle build`",
        ) from exc
    return data


@dataclass
class FileCheck:
    """Outcome of comparing a bundle folder with its manifest; ``contents`` holds verified bytes."""

    problems: list[str] = field(default_factory=list)
    contents: dict[str, bytes] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _safe_relpath(rel: str) -> bool:
    p = PurePosixPath(rel)
    return (
        bool(rel) and "\\" not in rel and not p.is_absolute() and ".." not in p.parts and rel == p.as_posix()
    )


def check_files(folder: Path, manifest: dict[str, Any]) -> FileCheck:
    """Every listed file present with the recorded size and sha256; nothing unlisted; no symlinks."""
    result = FileCheck()
    listed: dict[str, Any] = manifest["files"]
    for rel in sorted(listed):
        entry = listed[rel]
        if not _safe_relpath(rel) or rel in UNHASHED:
            result.problems.append(f"{rel}: path not allowed in a bundle (absolute, '..' or the manifest)")
            continue
        path = folder / rel
        if path.is_symlink():
            result.problems.append(f"{rel}: is a symlink (bundles hold regular files only)")
            continue
        if not path.is_file():
            result.problems.append(f"{rel}: missing")
            continue
        data = path.read_bytes()
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if (
            len(data) != (entry.get("size") if isinstance(entry, dict) else None)
            or sha256_bytes(data) != expected
        ):
            result.problems.append(f"{rel}: sha256 mismatch (modified since the bundle was built)")
            continue
        result.contents[rel] = data
    for rel in list_files(folder):
        if rel not in listed:
            result.problems.append(f"{rel}: not listed in the manifest (unexpected extra file)")
    return result


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def check_environment(manifest: dict[str, Any], *, strict: bool = False) -> tuple[list[str], list[str]]:
    """(errors, warnings) comparing the build environment with this one (rules in the module doc)."""
    built: dict[str, str] = manifest.get("environment", {})
    here = environment()
    errors: list[str] = []
    warnings: list[str] = []
    py_built = built.get("python", "?")
    if _major_minor(py_built) != _major_minor(here["python"]):
        errors.append(
            f"Python {py_built} built this bundle, this is Python {here['python']} (major.minor must match)"
        )
    for dist in ("selfheal", *TRACKED):
        was, now = built.get(dist), here.get(dist)
        if was is None or was == now:
            continue
        msg = f"{dist} {was} built this bundle, this environment has {now}"
        if dist in ERROR_IF_MAJOR_DIFFERS and (was.split(".")[0] != (now or "").split(".")[0]):
            errors.append(msg + " (major version must match)")
        else:
            warnings.append(msg)
    if strict:
        errors.extend(f"{w} (--strict)" for w in warnings)
        warnings = []
    return errors, warnings
