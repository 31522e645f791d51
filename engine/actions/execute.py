"""``execute``: the one entry the engine calls to act."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from engine.actions.context import ActionContext, ActionResult
from engine.actions.registry import get_action
from engine.actions.targets import Target, TargetsConfig
from engine.errors import ActionError, EngineError

log = logging.getLogger(__name__)


def execute(
    action: str,
    params: Mapping[str, Any],
    target: Target | str,
    idempotency_key: str,
    *,
    settings: TargetsConfig | None = None,
    requested_at: datetime | None = None,
    timeout_s: float | None = None,
) -> ActionResult:
    """Validate ``params`` against the action's signature and run it on ``target``.

    ``target`` is a resolved Target or a service name (resolved through ``settings``). The same
    ``idempotency_key`` (and ``requested_at``) must be reused on retry; backends pass it on so the
    far side applies the change once. ``timeout_s`` caps every request or program the action runs
    (``ActionContext.timeout_s``). Failures raise ActionError (user-code errors are wrapped with
    the original exception chained).
    """
    if not idempotency_key:
        raise ActionError("execute needs an idempotency key", hint="use the decision id")
    spec = get_action(action)
    config = settings or TargetsConfig()
    resolved = target if isinstance(target, Target) else config.target(target)
    values = spec.validate(params)
    ctx = ActionContext(resolved, idempotency_key, config, timeout_s=timeout_s)
    if requested_at is not None:
        ctx = dataclasses.replace(ctx, requested_at=requested_at)
    log.info(
        "executing %s on %s via %s",
        action,
        resolved.service,
        resolved.backend,
        extra={"idempotency_key": idempotency_key},
    )
    try:
        result = spec.fn(ctx, **values)
    except EngineError:
        raise
    except Exception as exc:  # third-party action code: keep the traceback, speak our error type
        raise ActionError(
            f"action {action!r} on {resolved.service} raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(result, ActionResult):
        result = ActionResult(
            action,
            resolved.service,
            resolved.backend,
            idempotency_key,
            result if isinstance(result, dict) else {"result": result},
        )
    return result


def repeatable(action: str, target: str, *, settings: TargetsConfig | None = None) -> bool:
    """Whether ``action`` on ``target``, called again with the same idempotency key, is applied at
    most once and answered with what was done: the action acts only through its backend and the
    backend deduplicates (the simulator, Kubernetes, an ``http`` target marked ``dedup: true``).

    After a crash left a call unanswered, such a call can be sent again to learn its outcome.
    """
    spec = get_action(action)
    if not spec.via_backend:
        return False
    resolved = (settings or TargetsConfig()).target(target)
    if resolved.backend == "http":
        return bool(resolved.http is not None and resolved.http.dedup)
    return resolved.backend in ("simulator", "kubernetes")
