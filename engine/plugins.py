"""Plugin loading shared by every registry (actions, detectors): built-ins first, then entry points.

Registries import their built-in modules and then every module named in their entry-point group;
the modules register themselves on import. One broken third-party plugin must not take the
built-ins (or the other plugins) down with it, so a failing entry point is logged with its
traceback and skipped; the names of the ones that failed are returned for callers that report them.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

__all__ = ["load_entry_points"]


def load_entry_points(group: str, log: logging.Logger, builtins: Iterable[str] = ()) -> list[str]:
    """Import ``builtins`` (errors propagate: they are ours), then every entry point of ``group``.

    Returns the names of the entry points that failed to load (each logged on ``log`` with its
    traceback).
    """
    for module in builtins:
        importlib.import_module(module)
    failed: list[str] = []
    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception:  # a broken third-party plugin must not take the built-ins down
            log.exception("%s plugin %s (%s) failed to load", group, ep.name, ep.value)
            failed.append(ep.name)
    return failed
