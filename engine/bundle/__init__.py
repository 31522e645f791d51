"""Bundles: a promoted detector fixed to one model version, shipped with its policies and a manifest.

Public face::

    build_bundle(model_uri, rules, *, tracking_uri, output=None, bundles_dir=None, targets=None,
                 topology=None, force=False) -> BuildResult          # needs MLflow
    verify_bundle(path, *, strict=False, digest=None) -> VerifyReport  # hashes + compatibility, no unpickling
    load_bundle(path, *, strict=False, digest=None) -> Bundle          # refuses before unpickling; no MLflow
    Bundle: .pipeline .policies .compiled .topology .targets .manifest .version .digest .detector_version

Loading runs the pickled detector's code, so it happens only after every file's sha256 matched.
"""

from __future__ import annotations

from engine.bundle.build import BuildResult, build_bundle, default_output
from engine.bundle.load import Bundle, VerifyReport, load_bundle, verify_bundle

__all__ = [
    "BuildResult",
    "Bundle",
    "VerifyReport",
    "build_bundle",
    "default_output",
    "load_bundle",
    "verify_bundle",
]
