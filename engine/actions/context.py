"""What an action receives (``ActionContext``) and returns (``ActionResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.actions.targets import Target, TargetsConfig

IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class ActionContext:
    """The target, the idempotency key and the settings one execution runs with.

    ``requested_at`` is fixed by the caller (the decision time), not taken at call time, so a retry
    with the same key sends byte-identical requests (for example the same ``restartedAt``).
    ``timeout_s`` is the caller's ceiling on each request or program an action runs (the engine's
    ``action_timeout_s``): a target's own shorter timeout still applies, a longer one is cut, so a
    hanging target never holds an actuator thread longer than the engine allows.
    """

    target: Target
    idempotency_key: str
    settings: TargetsConfig = field(default_factory=TargetsConfig)
    requested_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))
    timeout_s: float | None = None

    @property
    def service(self) -> str:
        return self.target.service

    def limit(self, seconds: float) -> float:
        """``seconds``, cut to the caller's ceiling when there is one."""
        return seconds if self.timeout_s is None else min(seconds, self.timeout_s)


@dataclass(frozen=True)
class ActionResult:
    """What happened. ``inverse_params`` are the params of the inverse action that would undo it."""

    action: str
    target: str
    backend: str
    idempotency_key: str
    detail: dict[str, Any] = field(default_factory=dict)
    inverse_params: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "target": self.target,
            "backend": self.backend,
            "idempotency_key": self.idempotency_key,
            "detail": self.detail,
            "inverse_params": self.inverse_params,
        }
