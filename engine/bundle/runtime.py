"""The bundle loader of the engine: ``selfheal run BUNDLE_DIR`` turns a verified bundle into components.

Registered with ``engine.runtime.components.register_loader`` exactly like a third-party loader
would be (the runtime imports this module when it is given a folder). The bundle must be signed by
a key in the ``trusted_keys`` setting (``selfheal run`` adds ``--trusted-key`` and
``HOME/keys/trusted/``) or ``SELFHEAL_TRUSTED_KEYS``, unless ``allow_unsigned``. The bundle digest
can also be pinned with ``SELFHEAL_BUNDLE_DIGEST`` (or a ``bundle_digest`` setting when the
runtime's configuration has one): a bundle rebuilt by someone else then refuses to load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.bundle.load import Bundle, load_bundle
from engine.bundle.manifest import MANIFEST_NAME
from engine.bundle.signing import Trust
from engine.runtime.components import EngineComponents, RegistryActions, ServiceInfo, register_loader

DIGEST_ENV = "SELFHEAL_BUNDLE_DIGEST"


def is_bundle(ref: str) -> bool:
    return (Path(ref) / MANIFEST_NAME).is_file()


def components_from_bundle(bundle: Bundle) -> EngineComponents:
    """Engine components over an already loaded bundle (durable-rules host from its compiled rules)."""
    from engine.policy.host import PolicyHost

    host = PolicyHost(bundle.compiled, tick_seconds=bundle.detector.interval_s)
    return EngineComponents(
        pipeline=bundle.detector,
        policies=host,
        actions=RegistryActions(bundle.targets),
        topology={
            name: ServiceInfo(tuple(spec.depends_on), spec.replicas, spec.tier)
            for name, spec in bundle.topology.services.items()
        },
        bundle_version=bundle.version,
        detector_version=bundle.detector_version,
        diagnosis=bundle.diagnosis,
    )


def load_bundle_components(ref: str, settings: Any) -> EngineComponents:
    digest = getattr(settings, "bundle_digest", None) or os.environ.get(DIGEST_ENV) or None
    trust = Trust.load(
        getattr(settings, "trusted_keys", ()), allow_unsigned=bool(getattr(settings, "allow_unsigned", False))
    )
    return components_from_bundle(load_bundle(ref, digest=digest, trust=trust))


register_loader("bundle", is_bundle, load_bundle_components)
