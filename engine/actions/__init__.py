"""Actuators: a registry of typed actions, backends per service, and one ``execute`` entry point.

Public face::

    register_action, ActionSpec, available_actions, get_action     # the registry
    ActionContext, ActionResult                                      # what actions get and return
    Target, TargetsConfig, load_targets, load_targets_text           # where they land
    execute(action, params, target, idempotency_key, *, settings=None, requested_at=None, timeout_s=None)
    repeatable(action, target, *, settings=None)   # may a call be sent again with its key (dedup)?
"""

from __future__ import annotations

from engine.actions.context import IDEMPOTENCY_HEADER, ActionContext, ActionResult
from engine.actions.execute import execute, repeatable
from engine.actions.registry import ActionSpec, available_actions, get_action, register_action
from engine.actions.targets import Target, TargetsConfig, load_targets, load_targets_text

__all__ = [
    "IDEMPOTENCY_HEADER",
    "ActionContext",
    "ActionResult",
    "ActionSpec",
    "Target",
    "TargetsConfig",
    "available_actions",
    "execute",
    "get_action",
    "load_targets",
    "load_targets_text",
    "register_action",
    "repeatable",
]
