"""Detector registry: names to factories, filled by plugins through one public hook.

Built-in detectors have no special case: ``engine.detectors.pyod_adapter`` calls
``register_detector`` at import exactly as a third-party module would. Plugin modules are imported
lazily on the first lookup (so ``import engine.detectors`` stays cheap): the built-in modules listed
in ``PLUGIN_MODULES`` plus any module a distribution declares under the ``selfheal.detectors``
entry-point group.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from typing import Any

from engine.detectors.base import Detector
from engine.errors import DetectorError
from engine.plugins import load_entry_points

__all__ = ["PLUGIN_MODULES", "DetectorFactory", "available_detectors", "make_detector", "register_detector"]

log = logging.getLogger(__name__)

DetectorFactory = Callable[[dict[str, Any], "int | None"], Detector]
"""``factory(params, random_state) -> Detector``; seeds ``random_state`` where the detector takes one."""

PLUGIN_MODULES: tuple[str, ...] = (
    "engine.detectors.pyod_adapter",
    "engine.detectors.nab_zscore",
    "engine.detectors.forecast",
    "engine.detectors.drift",
    "engine.detectors.cluster",
    "engine.detectors.ensemble",
)
"""Modules in this repo that register detectors when imported (append new detector families here)."""

ENTRY_POINT_GROUP = "selfheal.detectors"

_registry: dict[str, DetectorFactory] = {}
_plugins_loaded = False


def register_detector(name: str, factory: DetectorFactory, *, replace: bool = False) -> None:
    """Make ``name`` buildable by ``make_detector``; a second registration of a name needs ``replace``."""
    if not name or not isinstance(name, str):
        raise DetectorError(f"detector name must be a non-empty string, got {name!r}")
    if name in _registry and not replace and _registry[name] is not factory:
        raise DetectorError(
            f"detector {name!r} is already registered",
            hint="pick another name or pass replace=True to override it on purpose",
        )
    _registry[name] = factory


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    load_entry_points(ENTRY_POINT_GROUP, log, PLUGIN_MODULES)


def available_detectors() -> list[str]:
    """Every registered detector name, sorted."""
    _load_plugins()
    return sorted(_registry)


def make_detector(
    name: str, params: dict[str, Any] | None = None, *, random_state: int | None = 0
) -> Detector:
    """Build a registered detector; parameters are validated when it is fitted (sklearn contract), or
    earlier by calling its ``validate_params()`` (spec loaders do, so a typo fails at load)."""
    _load_plugins()
    factory = _registry.get(name)
    if factory is None:
        close = difflib.get_close_matches(name, _registry, n=1)
        if not close:
            close = [n for n in _registry if n.lower() == str(name).lower()]
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        raise DetectorError(
            f"unknown detector {name!r}{suggestion}",
            hint="engine.detectors.available_detectors() lists every registered name",
        )
    return factory(dict(params or {}), random_state)
