"""What the engine runs: the scoring pipeline, the policies, the actuators and the topology.

Why an in-process object and a loader registry: the engine must not care whether its parts come from
a hashed bundle directory, a test that fitted a pipeline a second ago, or a chaos experiment. A
loader turns a reference (``selfheal run REF`` or ``components:`` in the config) into an
``EngineComponents``; the bundle package registers its loader exactly like a third party would::

    from engine.runtime.components import register_loader
    register_loader("bundle", lambda ref: (Path(ref) / "manifest.json").is_file(), load_bundle_components)

Built in: ``path/to/file.py:function`` or ``package.module:function`` naming a factory
``function(settings) -> EngineComponents`` (tests and experiments use it).

The three seams are protocols so that the engine's own logic (safeguards, approvals, journal,
recovery) depends on nothing else in the project.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from engine.errors import ConfigError
from engine.runtime.model import ActionCall, AnomalyEvent, Decision

log = logging.getLogger(__name__)


@runtime_checkable
class OnlineFeaturesLike(Protocol):
    def push(self, ts: float, service: str, metric: str, value: float) -> list[Any]: ...
    def flush(self) -> list[Any]: ...


@runtime_checkable
class PipelineLike(Protocol):
    """``engine.detectors.pipeline.ScoringPipeline`` as the engine uses it."""

    detector: str
    feature_spec: Any
    threshold_: float

    @property
    def feature_names(self) -> list[str]: ...
    def score_rows(self, rows: Sequence[Any]) -> np.ndarray: ...


@runtime_checkable
class PolicyEngine(Protocol):
    """The policies compiled into a durable-rules host, as the engine drives them.

    ``decide`` posts one event and returns the decisions it caused (empty when no rule matched);
    ``set_health`` keeps a service's health fact current so dependency gating sees it;
    ``replay`` feeds a journaled event back after a restart to rebuild counts, discarding decisions.
    """

    version: str

    def decide(self, event: AnomalyEvent) -> list[Decision]: ...
    def set_health(self, service: str, anomalous: bool, score: float) -> None: ...
    def replay(self, event: AnomalyEvent) -> None: ...


@runtime_checkable
class ActionRunner(Protocol):
    """Runs one action on one target. Raises ``engine.errors.ActionError`` when it fails.

    ``idempotency_key`` is unique per (decision, kind); backends that can (``http``) send it along
    so that a target seeing the same key twice acts once. ``timeout_s`` caps what the call may
    wait on (each request or program it runs).
    """

    def run(self, call: ActionCall, *, target: str, idempotency_key: str, timeout_s: float) -> Any: ...


@dataclass(frozen=True)
class ServiceInfo:
    dependencies: tuple[str, ...] = ()
    replicas: int = 1
    tier: str = ""


@dataclass
class EngineComponents:
    """Everything ``Engine`` needs besides its settings."""

    pipeline: PipelineLike
    policies: PolicyEngine
    actions: ActionRunner
    topology: dict[str, ServiceInfo] = field(default_factory=dict)
    bundle_version: str = "dev"
    detector_version: str = "dev"
    features_factory: Callable[[], OnlineFeaturesLike] | None = None

    def new_features(self) -> OnlineFeaturesLike:
        if self.features_factory is not None:
            return self.features_factory()
        from engine.features import OnlineFeatures

        return OnlineFeatures(self.pipeline.feature_spec)

    def replicas(self, service: str) -> int:
        info = self.topology.get(service)
        return info.replicas if info else 1


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
