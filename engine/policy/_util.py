"""Small parsing helpers shared by the policy modules: durations and "did you mean" hints."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$"
)


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"2h"`` or ``"1h30m"``.

    Operators write durations the way they say them; a bare number means seconds. Raises ValueError
    with the accepted forms so pydantic reports it at the right path.
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '15m', '2h', '1h30m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)) and any(match.groups()):
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    else:
        raise ValueError(
            f"{value!r} is not a duration; write a number of seconds or '30s', '15m', '2h', '1h30m'"
        )
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """``"did you mean 'x'?"`` for the closest choice, or None when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def one_of(choices: Iterable[str]) -> str:
    """A short "one of: a, b, c" list for hints."""
    items = sorted(set(choices))
    return "one of: " + ", ".join(items) if items else "none defined"
