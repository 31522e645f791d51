"""The autonomy ladder: how much a policy may do on its own, per policy and per service.

- ``observe``: decide and journal what would have run (status ``observed``), never act;
- ``suggest``: every action waits for an approval, whatever its risk;
- ``auto``: risk decides, as the policy says (the default).

Why: a team adopts automation by watching a policy decide before letting it act. ``observed``
decisions are judged afterwards (``would_be``): did the anomaly clear by itself before the
action's verification deadline? A policy whose would-be actions mostly clear on their own is
not ready to act; one whose anomalies persist is.

Modes come from the engine config (``modes: {platform: observe, platform/vector-db: suggest}``,
a ``policy/service`` key overriding its policy's) and change at run time through the API (an
approver's token): each change is a journaled control (``mode:POLICY`` or
``mode:POLICY/SERVICE``, with actor and reason), so it survives a restart and shows in
``selfheal journal --kind control``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Literal

from engine.errors import ConfigError
from engine.runtime.executor import DEFAULT_DEADLINE_S
from engine.runtime.journal import DecisionStatus, Journal
from engine.specs import did_you_mean

Mode = Literal["observe", "suggest", "auto"]
MODES: tuple[Mode, ...] = ("observe", "suggest", "auto")
PREFIX = "mode:"


def key(policy: str, service: str | None = None) -> str:
    """The modes key (and, with ``PREFIX``, the control key) of a policy or of one of its services."""
    return f"{policy}/{service}" if service else policy


class Modes:
    """Each policy's mode and per-service overrides; read on the hot path, set by operators."""

    def __init__(self, configured: Mapping[str, str] | None = None, *, known: set[str] | None = None) -> None:
        """``known``: the loaded policies' names; a configured key naming another policy fails here
        (a typo would otherwise leave that policy in ``auto`` without a word)."""
        for name in configured or {}:
            policy = name.split("/", 1)[0]
            if known is not None and policy not in known:
                raise ConfigError(
                    f"engine config: modes: {name!r} names no loaded policy",
                    hint=did_you_mean(policy, known) or f"policies: {', '.join(sorted(known))}",
                )
        self._modes: dict[str, str] = dict(configured or {})
        self._lock = threading.Lock()  # writers only: a read sees the old dict or the new one

    def of(self, policy: str, service: str) -> str:
        modes = self._modes
        return modes.get(f"{policy}/{service}") or modes.get(policy) or "auto"

    def snapshot(self) -> dict[str, str]:
        return dict(self._modes)

    def load(self, journal: Journal) -> None:
        """Changes made at run time (journaled controls) win over the config's modes."""
        for row in journal.controls(PREFIX):
            self._apply(row["key"][len(PREFIX) :], row["value"])

    def set(
        self, journal: Journal, policy: str, service: str | None, mode: str, *, actor: str, reason: str | None
    ) -> None:
        """Journal the change (with who and why), then apply it."""
        journal.set_control(PREFIX + key(policy, service), mode, actor=actor, reason=reason)
        self._apply(key(policy, service), mode)

    def _apply(self, name: str, mode: str) -> None:
        with self._lock:
            self._modes = {**self._modes, name: mode}


def policy_names(policies: Any) -> set[str] | None:
    """The names of the loaded policies, when the policy engine can tell (the durable-rules host)."""
    policy_set = getattr(policies, "policy_set", None)
    return None if policy_set is None else {bound.policy.policy for bound in policy_set.rules}


def would_be(journal: Journal, policy: str, *, now: float, limit: int = 500) -> dict[str, Any]:
    """The policy's observed decisions and how each turned out without an action: ``cleared``
    (the service was healthy again before the action's verification deadline), ``persisted``
    (still anomalous at the deadline) or ``pending`` (the deadline has not come)."""
    rows = journal.decisions_of(policy, DecisionStatus.OBSERVED, limit=limit)
    out = []
    counts = {"cleared": 0, "persisted": 0, "pending": 0}
    for row in rows:
        verify = (row.get("spec") or {}).get("verify") or {}
        deadline = row["ts"] + float(verify.get("deadline_s") or DEFAULT_DEADLINE_S)
        healthy = journal.healthy_again(row["service"], after=row["ts"], until=deadline)
        outcome = "cleared" if healthy is not None else "pending" if now < deadline else "persisted"
        counts[outcome] += 1
        out.append(
            {
                "decision_id": row["id"],
                "ts": row["ts"],
                "service": row["service"],
                "target": row["target"],
                "rule": row["rule"],
                "action": row["action"],
                "outcome": outcome,
                "cleared_after_s": None if healthy is None else round(healthy - row["ts"], 3),
            }
        )
    return {"policy": policy, "counts": counts, "decisions": out}
