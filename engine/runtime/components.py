"""What the engine runs: the detector, the policies, the actuators and the topology.

Why an in-process object and a loader registry: the engine must not care whether its parts come from
a hashed bundle directory, a test that fitted a detector a second ago, or a chaos experiment. A
loader turns a reference (``selfheal run REF`` or ``components:`` in the config) into an
``EngineComponents``; the bundle package registers its loader exactly like a third party would::

    from engine.runtime.components import register_loader
    register_loader("bundle", lambda ref: (Path(ref) / "manifest.json").is_file(), load_bundle_components)

Built in: ``path/to/file.py:function`` or ``package.module:function`` naming a factory
``function(settings) -> EngineComponents`` (tests and experiments use it). ``assemble`` builds
components from a fitted detector, a policy folder and a targets file.

The three seams are protocols owned by the stages that call them (``StreamScorer`` by scoring,
``PolicyEngine`` by the policy stage, ``ActionRunner`` by the executor), so the engine's own logic
depends on nothing else in the project.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.records import ActionCall
from engine.runtime.executor import ActionRunner
from engine.runtime.policies import PolicyEngine
from engine.runtime.scoring import StreamScorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceInfo:
    dependencies: tuple[str, ...] = ()
    replicas: int = 1
    tier: str = ""


@dataclass
class EngineComponents:
    """Everything ``Engine`` needs besides its settings."""

    pipeline: StreamScorer
    policies: PolicyEngine
    actions: ActionRunner
    topology: dict[str, ServiceInfo] = field(default_factory=dict)
    bundle_version: str = "dev"
    detector_version: str = "dev"
    diagnosis: Any = field(default_factory=lambda: _shipped_diagnosis())
    """The fault-kind model (``engine.diagnosis.KindModel``); None runs no diagnosis stage."""

    def diagnosis_stage(self) -> Any:
        """A fresh diagnosis stage over this topology, or None without a model."""
        if self.diagnosis is None:
            return None
        from engine.diagnosis import DiagnosisStage

        deps = {name: info.dependencies for name, info in self.topology.items()}
        return DiagnosisStage(self.diagnosis, deps, version=self.diagnosis.version)

    def signer(self) -> Any:
        """The diagnosis' per-service half for a place that scores rows (``Signer``), or None
        without a model."""
        if self.diagnosis is None:
            return None
        from engine.diagnosis.stage import Signer

        return Signer(self.diagnosis)

    def replicas(self, service: str) -> int:
        info = self.topology.get(service)
        return info.replicas if info else 1

    def versions(self) -> dict[str, str]:
        """What the running engine is named by (the ``selfheal_bundle`` gauge)."""
        return {
            "bundle_version": self.bundle_version,
            "detector": self.pipeline.detector,
            "detector_version": self.detector_version,
            "policy_version": self.policies.version,
        }


def _shipped_diagnosis() -> Any:
    from engine.diagnosis import shipped_model

    return shipped_model()


class RegistryActions:
    """``ActionRunner`` over the action registry; backends per service come from the targets file.

    ``timeout_s`` (the engine's ``action_timeout_s``) caps each request or program of the call; a
    target's own shorter ``timeout_s`` in the targets file still applies. ``requested_at`` (epoch
    seconds, fixed per decision) makes a repeated call byte-identical (Kubernetes' restartedAt).
    """

    def __init__(self, targets: Any = None) -> None:
        from engine.actions import TargetsConfig

        self.targets = targets if targets is not None else TargetsConfig()

    def run(
        self,
        call: ActionCall,
        *,
        target: str,
        idempotency_key: str,
        timeout_s: float,
        requested_at: float | None = None,
    ) -> Any:
        from engine.actions import execute

        return execute(
            call.action,
            call.params,
            target,
            idempotency_key,
            settings=self.targets,
            timeout_s=timeout_s,
            requested_at=None
            if requested_at is None
            else datetime.fromtimestamp(requested_at, UTC).replace(tzinfo=None),
        )

    def repeatable(self, call: ActionCall, *, target: str) -> bool:
        from engine.actions import repeatable

        return repeatable(call.action, target, settings=self.targets)


def assemble(
    pipeline: StreamScorer,
    rules: Path | str,
    *,
    targets: Path | str | Any | None = None,
    topology: Path | str | None = None,
    bundle_version: str = "dev",
    detector_version: str = "dev",
) -> EngineComponents:
    """Components from a fitted detector, a policy folder (or file) and a targets file or config."""
    from engine.actions import load_targets
    from engine.actions.targets import targets_for_policy
    from engine.policy.host import PolicyHost
    from engine.policy.loader import load_policies

    policy_set = load_policies(rules, topology=topology)
    host = PolicyHost(policy_set, tick_seconds=pipeline.interval_s)
    if isinstance(targets, str | Path):
        targets = load_targets(targets)
    elif targets is None:
        beside = targets_for_policy(Path(rules))
        targets = load_targets(beside) if beside.is_file() else None
    topo = {
        name: ServiceInfo(tuple(spec.depends_on), spec.replicas, spec.tier)
        for name, spec in policy_set.topology.services.items()
    }
    return EngineComponents(
        pipeline=pipeline,
        policies=host,
        actions=RegistryActions(targets),
        topology=topo,
        bundle_version=bundle_version,
        detector_version=detector_version,
    )


Loader = Callable[[str, Any], EngineComponents]
_LOADERS: list[tuple[str, Callable[[str], bool], Loader]] = []


def register_loader(name: str, accepts: Callable[[str], bool], loader: Loader) -> None:
    """Add a way to turn a reference into components; later registrations are tried first."""
    _LOADERS.insert(0, (name, accepts, loader))


def load_components(ref: str, settings: Any) -> EngineComponents:
    """Resolve ``ref`` with the first loader that accepts it."""
    if Path(ref).is_dir():
        _import_optional("engine.bundle.runtime")  # lets the bundle package register its loader
    for name, accepts, loader in _LOADERS:
        if accepts(ref):
            log.info("loading components from %s with the %s loader", ref, name)
            components = loader(ref, settings)
            if not isinstance(components, EngineComponents):
                raise ConfigError(
                    f"{ref}: the {name} loader returned {type(components).__name__}, not EngineComponents"
                )
            return components
    if not Path(ref).exists():
        raise ConfigError(
            f"{ref} does not exist",
            hint="give a bundle directory (`selfheal bundle build` prints it), an engine config "
            "(.yaml) or a factory as path/to/file.py:function",
        )
    raise ConfigError(
        f"{ref}: no loader knows this reference",
        hint="give a bundle directory or a factory as path/to/file.py:function or package.module:function",
    )


def _import_optional(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise


def _is_factory_ref(ref: str) -> bool:
    head, sep, tail = ref.rpartition(":")
    return bool(sep and head and tail.isidentifier() and not Path(ref).exists())


def _load_factory(ref: str, settings: Any) -> EngineComponents:
    head, _, func = ref.rpartition(":")
    if head.endswith(".py"):
        path = Path(head).resolve()
        if not path.is_file():
            raise ConfigError(f"{ref}: {path} does not exist", hint="give the factory's file path")
        spec = importlib.util.spec_from_file_location(f"selfheal_components_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"{ref}: cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(head)
        except ImportError as exc:
            raise ConfigError(f"{ref}: cannot import {head} ({exc})", hint="check the module path") from exc
    factory = getattr(module, func, None)
    if not callable(factory):
        raise ConfigError(f"{ref}: {head} has no function {func!r}", hint="name a function(settings)")
    return factory(settings)


register_loader("factory", _is_factory_ref, _load_factory)
