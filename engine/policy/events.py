"""Anomaly events and health facts: what the engine feeds the policy host.

The engine scores a service once per tick; when the score crosses the threshold it builds an
``AnomalyEvent``. Besides the detector fields, an event carries the service's current metric values
(``metrics``, for "conditions on other metrics" and for templates) and the metrics that contributed
most (``contributing``). ``tick`` numbers the service's scoring ticks so that "3 of the last 5 ticks"
can be counted; when absent it is derived from ``ts`` and the host's tick length.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.ids import hex_id
from engine.policy.model import SEVERITY_LEVEL, Severity

EVENT_TYPE = "anomaly"
HISTORY_TYPE = "anomaly_history"
HEALTH_TYPE = "health"


def severity_for(score: float) -> Severity:
    """Default severity from a calibrated score when the engine does not set one."""
    if score >= 0.99:
        return "critical"
    if score >= 0.9:
        return "high"
    if score >= 0.7:
        return "medium"
    return "low"


class AnomalyEvent(BaseModel):
    """One anomaly of one service at one scoring tick (score calibrated to [0, 1])."""

    model_config = ConfigDict(extra="forbid")

    service: str
    detector: str
    score: float
    ts: float = Field(description="epoch seconds, UTC: end of the scored window")
    threshold: float = 0.0
    severity: Severity | None = None
    tick: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    contributing: list[str] = Field(default_factory=list)
    window_start: float | None = None
    window_end: float | None = None
    bundle_version: str | None = None
    id: str = Field(default_factory=hex_id, description="unique; durable-rules dedups")

    @model_validator(mode="after")
    def _fill(self) -> AnomalyEvent:
        if self.severity is None:
            self.severity = severity_for(self.score)
        return self

    def fields(self) -> dict[str, Any]:
        """The values templates can reference (``${service}``, ``${metrics.memory_util}``, ...)."""
        return self.model_dump()

    def message(self, *, tick_seconds: float) -> dict[str, Any]:
        """The durable-rules message: the event plus the derived fields rules test.

        ``dow`` (0 = Monday) and ``tod`` (minute of the UTC day) let maintenance windows compile to
        plain comparisons; ``sev`` is the severity as a number for range tests. The message ``id``
        is fresh on every call, so re-posting the same event (a retry, a replay) is processed again.
        """
        moment = datetime.fromtimestamp(self.ts, tz=UTC)
        tick = self.tick if self.tick is not None else int(self.ts // tick_seconds)
        msg: dict[str, Any] = {
            "t": EVENT_TYPE,
            "id": hex_id(),  # durable-rules drops a message it has seen: never reuse one
            "event_id": self.id,
            "service": self.service,
            "detector": self.detector,
            "score": float(self.score),
            "threshold": float(self.threshold),
            "sev": SEVERITY_LEVEL[self.severity or "low"],
            "ts": float(self.ts),
            "tick": tick,
            "dow": moment.weekday(),
            "tod": moment.hour * 60 + moment.minute,
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "contributing": list(self.contributing),
        }
        return msg


class HealthFact(BaseModel):
    """What the policy host knows about a service right now (kept current by the engine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str
    anomalous: bool = False
    maintenance: bool = False
