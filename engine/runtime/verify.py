"""Steady-state checks after an action: did the target come back, and by when must it have?

Pure functions: the engine passes the latest observations (each stamped with the wall time it was
seen) and the verification's start; only observations made after the action count, so a score
computed before the restart cannot "verify" the restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.records import VerifySpec

Observation = tuple[float, float]  # (value, wall time seen)


@dataclass(frozen=True)
class SteadyState:
    holds: bool | None  # None: no observation since the action yet
    detail: dict[str, float | str | None]


def steady_state(
    spec: VerifySpec,
    target: str,
    *,
    since: float,
    scores: Mapping[str, Observation],
    metrics: Mapping[tuple[str, str], Observation],
) -> SteadyState:
    """Whether ``spec``'s steady state holds for ``target`` on observations newer than ``since``."""
    detail: dict[str, float | str | None] = {}
    verdicts: list[bool | None] = []
    if spec.score_below is not None:
        seen = scores.get(target)
        if seen is None or seen[1] < since:
            verdicts.append(None)
            detail["score"] = None
        else:
            detail["score"] = seen[0]
            verdicts.append(seen[0] < spec.score_below)
    for metric, (low, high) in spec.metrics.items():
        seen = metrics.get((target, metric))
        if seen is None or seen[1] < since:
            verdicts.append(None)
            detail[metric] = None
        else:
            value = seen[0]
            detail[metric] = value
            verdicts.append((low is None or value >= low) and (high is None or value <= high))
    if not verdicts:
        return SteadyState(True, {"note": "no steady state declared"})
    if any(v is False for v in verdicts):
        return SteadyState(False, detail)
    if any(v is None for v in verdicts):
        return SteadyState(None, detail)
    return SteadyState(True, detail)
