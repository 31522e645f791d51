"""The one duration grammar of selfheal (policies, feature specs, chaos experiments).

Operators write durations the way they say them, so every file accepts the same forms:

- a bare number (int, float or a numeric string such as ``"10"``) is seconds;
- a number with a unit: ``us``, ``ms``, ``s``, ``m`` (or ``min``), ``h``, ``d``;
- compound forms, largest unit first, each unit once: ``1h30m``, ``2m30s``, ``1d 12h``.

Negative and non-finite values (``inf``, ``nan``) are always refused; zero is refused when the caller
says so (``allow_zero=False``: a verification deadline or a persistence window of zero makes no
sense, a feature lateness of zero does). Before this module, policies and feature specs each had a
parser with a different grammar (``1h30m`` worked in one, ``1d`` in the other); one grammar means a
duration that validates in one file validates in every file.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

from engine.errors import ConfigError

__all__ = ["DURATION_HELP", "UNITS", "parse_duration", "since_ts"]

#: Seconds per unit, largest first (the order compound forms must follow).
UNITS: dict[str, float] = {
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "min": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
}
_RANK = {"d": 0, "h": 1, "m": 2, "min": 2, "s": 3, "ms": 4, "us": 5}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"\s*({_NUMBER})\s*(us|ms|min|s|m|h|d)\s*")
_BARE = re.compile(rf"^\s*({_NUMBER})\s*$")

DURATION_HELP = "a number of seconds or a duration like 500ms, 30s, 15m, 2h, 1d or 1h30m"


def parse_duration(value: object, *, allow_zero: bool = True, what: str = "duration") -> float:
    """Seconds from a duration (grammar in the module docstring).

    Raises ValueError (so pydantic reports it at the field's path) naming the value, the accepted
    forms, and why it was refused. ``what`` names the field in the message, e.g. ``"deadline"``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a {what}; write {DURATION_HELP}")
    seconds = _parse_text(value, what) if isinstance(value, str) else float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{what} {value!r} is not finite; write {DURATION_HELP}")
    if seconds < 0:
        raise ValueError(f"{what} {value!r} is negative; a {what} is 0 or more")
    if seconds == 0 and not allow_zero:
        raise ValueError(f"{what} {value!r} is zero; it must be greater than 0")
    return seconds


def _parse_text(text: str, what: str) -> float:
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"{what} {text!r} is negative; a {what} is 0 or more")
    if stripped.lower().lstrip("+") in {"inf", "infinity", "nan"}:
        raise ValueError(f"{what} {text!r} is not finite; write {DURATION_HELP}")
    if bare := _BARE.match(stripped):
        return float(bare.group(1))
    total, pos, last_rank = 0.0, 0, -1
    while pos < len(stripped):
        part = _PART.match(stripped, pos)
        if part is None or part.end() == pos:
            raise ValueError(f"{text!r} is not a {what}; write {DURATION_HELP}")
        number, unit = part.groups()
        if _RANK[unit] <= last_rank:
            raise ValueError(
                f"{text!r} is not a {what}: write units largest first, each once (e.g. 1h30m, not 30m1h)"
            )
        last_rank = _RANK[unit]
        total += float(number) * UNITS[unit]
        pos = part.end()
    if last_rank < 0:
        raise ValueError(f"{text!r} is not a {what}; write {DURATION_HELP}")
    return total


def since_ts(value: str | None) -> float | None:
    """A ``--since`` (or the console's ``since``) as epoch seconds: how long ago in the one duration
    grammar (30m, 2h, 1h30m), else an ISO time (UTC unless it says otherwise)."""
    if value is None:
        return None
    try:
        return time.time() - parse_duration(value, what="--since")
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(
            f"--since {value!r} is neither a duration nor a time",
            hint="e.g. 30m, 1h30m or 2026-11-27T08:00",
        ) from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
