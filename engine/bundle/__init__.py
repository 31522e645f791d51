"""Bundles: a promoted detector fixed to one model version, shipped with its policies and a manifest.

Public face::

    build_bundle(model_uri, rules, *, tracking_uri, output=None, bundles_dir=None, targets=None,
                 topology=None, force=False, signing_key=None) -> BuildResult      # needs MLflow
    verify_bundle(path, *, strict=False, digest=None, trust=None) -> VerifyReport  # no loading
    load_bundle(path, *, strict=False, digest=None, trust=None) -> Bundle          # refuses before loading
    Bundle: .detector .policies .compiled .topology .targets .manifest .version .digest .detector_version
    Trust.load(paths, allow_unsigned=False), Trust.for_home(home, paths)           # the keys to accept

The detector is loaded (skops, no code run) only after the manifest's Ed25519 signature verified
under a trusted key (``engine.bundle.signing``) and every file's sha256 matched.
"""

from __future__ import annotations

from engine.bundle.build import BuildResult, build_bundle, default_output
from engine.bundle.load import Bundle, VerifyReport, load_bundle, verify_bundle
from engine.bundle.signing import Trust

__all__ = [
    "BuildResult",
    "Bundle",
    "Trust",
    "VerifyReport",
    "build_bundle",
    "default_output",
    "load_bundle",
    "verify_bundle",
]
