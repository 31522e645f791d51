"""Telemetry points: the one definition of a valid point, for every way points come in.

A point is ``(ts, service, metric, value)`` wherever it comes from: an HTTP push, a tailed file, a
scrape, or a file ingested into the store. Why one parser: a bad point must be refused the same way
everywhere (its failing field named, counted, written to a dead-letter or quarantine file) without
ever stopping the good points beside it, and a line the engine refuses must not load from a file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.telemetry.columns import PointColumns, read_ndjson

Point = tuple[float, str, str, float]  # ts (epoch s, UTC), service, metric, value
Points = list[Point] | PointColumns  # a batch as it is queued and sent to the scoring workers


@dataclass(frozen=True)
class Rejection:
    """One refused point: where it was in its request, the failing field and why."""

    index: int
    field: str
    reason: str
    raw: Any

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


MAX_TS = 1e11  # year 5138 in seconds, 1973 in milliseconds: anything above is milliseconds
MAX_FUTURE_S = 600.0  # clock skew tolerated; a later point would make every real one "late"
TS_HINT = "epoch seconds, not milliseconds"


def _ts(value: Any, now: float) -> float:
    if isinstance(value, bool):
        raise ValueError("must be epoch seconds or an ISO 8601 timestamp, got a boolean")
    if isinstance(value, int | float):
        out = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an ISO 8601 timestamp") from exc
        out = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    else:
        raise ValueError(f"must be epoch seconds or an ISO 8601 timestamp, got {type(value).__name__}")
    if not math.isfinite(out) or not 0 < out < MAX_TS:
        raise ValueError(f"{out!r} is not a valid time; must be in (0, {MAX_TS:.0e}): {TS_HINT}")
    if out > now + MAX_FUTURE_S:
        raise ValueError(
            f"{out!r} is {out - now:.0f} s in the future (at most {MAX_FUTURE_S:.0f} s allowed); "
            f"{TS_HINT}, and check the sender's clock"
        )
    return out


def parse_point(item: Any, now: float | None = None) -> Point:
    """Validate one decoded point against the wall clock ``now`` (default: the current time); raise
    ``PointError`` naming the failing field."""
    now = time.time() if now is None else now
    if not isinstance(item, dict):
        raise PointError("point", f"must be a JSON object, got {type(item).__name__}")
    try:
        ts = item["ts"]
        service = item["service"]
        metric = item["metric"]
        value = item["value"]
    except KeyError as exc:
        raise PointError(str(exc.args[0]), "is missing") from None
    if type(value) is not float:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PointError("value", f"must be a number, got {type(value).__name__}")
        value = float(value)
    elif value != value or value in (math.inf, -math.inf):
        raise PointError("value", "must be finite (NaN and infinity are refused)")
    if type(ts) is not float or not 0 < ts <= now + MAX_FUTURE_S:
        try:
            ts = _ts(ts, now)
        except ValueError as exc:
            raise PointError("ts", str(exc)) from None
    if type(service) is not str or not service:
        raise PointError("service", "must be a non-empty string")
    if type(metric) is not str or not metric:
        raise PointError("metric", "must be a non-empty string")
    return ts, service, metric, value


class PointError(ValueError):
    """A point failed validation; ``field`` is the one to fix."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def parse_items(items: Iterable[Any]) -> tuple[list[Point], list[Rejection]]:
    good: list[Point] = []
    bad: list[Rejection] = []
    append = good.append
    now = time.time()
    latest = now + MAX_FUTURE_S
    for i, item in enumerate(items):
        # Fast path for the common, well-typed point; anything else gets the full check and its reason.
        if type(item) is dict and len(item) == 4:
            ts = item.get("ts")
            service = item.get("service")
            metric = item.get("metric")
            value = item.get("value")
            if (
                type(ts) is float
                and type(value) is float
                and type(service) is str
                and type(metric) is str
                and service
                and metric
                and 0.0 < ts <= latest
                and value - value == 0.0
            ):
                append((ts, service, metric, value))
                continue
        try:
            append(parse_point(item, now))
        except PointError as exc:
            bad.append(Rejection(i, exc.field, exc.reason, item))
    return good, bad


def parse_body(body: bytes, content_type: str = "") -> tuple[Points, list[Rejection]]:
    """Decode an HTTP body: a JSON array, ``{"points": [...]}``, one object, or NDJSON lines.

    A large NDJSON body of well-formed points comes back as ``PointColumns`` (decoded without
    holding the interpreter lock, see ``engine.telemetry.columns``); anything else as a list.
    """
    if "ndjson" in content_type:
        columns = read_ndjson(body, time.time(), MAX_FUTURE_S)
        if columns is not None:
            return columns, []
    text = body.decode("utf-8", errors="replace")
    stripped = text.lstrip()
    if "ndjson" not in content_type and stripped[:1] in ("[", "{"):
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError:
            decoded = None  # fall through to NDJSON: several objects on separate lines
        else:
            if isinstance(decoded, dict) and isinstance(decoded.get("points"), list):
                return parse_items(decoded["points"])
            return parse_items(decoded if isinstance(decoded, list) else [decoded])
    return parse_lines(text.splitlines())


def parse_lines(lines: Iterable[str]) -> tuple[list[Point], list[Rejection]]:
    """NDJSON: one point per line; blank lines are skipped; a line that is not JSON is rejected.

    Decoding all lines as one JSON array is ~3x faster than line by line; when any line is broken
    the batch is decoded line by line so that only that line is refused (and named).
    """
    numbered = [(i, line) for i, line in enumerate(lines) if line.strip()]
    good: list[Point] = []
    bad: list[Rejection] = []
    for start in range(0, len(numbered), _CHUNK):
        chunk = numbered[start : start + _CHUNK]
        g, b = _parse_chunk(chunk)
        good.extend(g)
        bad.extend(b)
    return good, bad


_CHUNK = 1000  # lines decoded per json.loads call: bounds how long one call holds the GIL


def _parse_chunk(numbered: list[tuple[int, str]]) -> tuple[list[Point], list[Rejection]]:
    try:
        items = json.loads("[" + ",".join(line for _, line in numbered) + "]")
    except json.JSONDecodeError:
        items = None
    if items is not None and len(items) == len(numbered):
        good, bad = parse_items(items)
        # report the line number in the body, not the position in the chunk
        return good, [Rejection(numbered[r.index][0], r.field, r.reason, r.raw) for r in bad]
    good = []
    bad = []
    loads = json.loads
    for i, line in numbered:
        try:
            good.append(parse_point(loads(line)))
        except json.JSONDecodeError as exc:
            bad.append(Rejection(i, "line", f"not JSON ({exc.msg} at column {exc.colno})", line[:500]))
        except PointError as exc:
            bad.append(Rejection(i, exc.field, exc.reason, line[:500]))
    return good, bad
