"""Small parsing helpers shared by the policy modules: durations and "did you mean" hints."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from engine.durations import parse_duration as _parse_duration


def parse_duration(value: object) -> float:
    """Seconds from a policy duration (``90``, ``"90s"``, ``"15m"``, ``"1h30m"``, ``"1d"``).

    The grammar is ``engine.durations``; policy durations (deadlines, windows, cooldowns) must be
    greater than zero. Raises ValueError so pydantic reports it at the right path.
    """
    return _parse_duration(value, allow_zero=False)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """``"did you mean 'x'?"`` for the closest choice, or None when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def one_of(choices: Iterable[str]) -> str:
    """A short "one of: a, b, c" list for hints."""
    items = sorted(set(choices))
    return "one of: " + ", ".join(items) if items else "none defined"
