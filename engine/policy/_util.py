"""The policy language's duration: the one grammar of ``engine.durations``, never zero."""

from __future__ import annotations

from engine.durations import parse_duration as _parse_duration


def parse_duration(value: object) -> float:
    """Seconds from a policy duration (``90``, ``"90s"``, ``"15m"``, ``"1h30m"``, ``"1d"``).

    The grammar is ``engine.durations``; policy durations (deadlines, windows, cooldowns) must be
    greater than zero. Raises ValueError so pydantic reports it at the right path.
    """
    return _parse_duration(value, allow_zero=False)
