"""Telemetry points: the one definition of a valid point, for every way points come in.

A point is ``(ts, service, metric, value)`` wherever it comes from: an HTTP push, a tailed file, a
scrape, or a file ingested into the store. Why one parser: a bad point must be refused the same way
everywhere (its failing field named, counted, written to a dead-letter or quarantine file) without
ever stopping the good points beside it, and a line the engine refuses must not load from a file
(the JSON-lines reader runs this very code; the vectorised CSV/Parquet validation in
``engine.telemetry.readers`` applies the same rules, and property tests hold the two together).

The rules, in the order they are checked (the first that fails names the point's field and code):

1. ``missing_<field>``: ``ts``, ``service``, ``metric`` or ``value`` absent, null or ``""``
   (``timestamp`` is accepted for ``ts``).
2. ``ts``: a JSON number of epoch seconds, or text: ``YYYY-MM-DD[T ]HH:MM:SS[.fraction]`` with an
   optional ``Z`` or ``±HH[:]MM`` offset (naive means UTC; digits beyond microseconds are cut), or a
   decimal number of epoch seconds. Anything else is ``unparsable_ts``; a time outside
   (0, 1e11) s (milliseconds) or more than ``MAX_FUTURE_S`` ahead of the reader's clock is
   ``ts_out_of_range``.
3. ``service``, then ``metric``: a JSON string (``non_string_<field>``), at most ``max_length``
   characters of printable text (Python's ``str.isprintable``: no control, format, surrogate,
   private-use or unassigned characters, no separators but the space), and matching the
   configured ``pattern`` when there is one (``invalid_<field>``). A lone UTF-16 surrogate
   (``"\\ud800"``) is not text: it cannot even be encoded to UTF-8 for ``/metrics``.
4. ``value``: a JSON number (``non_numeric_value``; in CSV, decimal text), finite and within the
   range of a double: NaN, infinity, ``1e400`` and an integer literal of 309 digits or more are
   ``non_finite_value``.
5. ``labels`` (optional): a JSON object, or text holding one (``malformed_labels``).

A line that is not one JSON object is ``malformed_line``: broken JSON, two objects on a line, or
JSON nested deeper than Python's decoder recurses (~1,000 levels), which is refused for that line
alone. An integer literal longer than Python converts (4,300 digits) is named by its field, not
lost with its line. Blank lines are skipped.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, NamedTuple

from engine.telemetry.columns import PointColumns, read_ndjson

Point = tuple[float, str, str, float]  # ts (epoch s, UTC), service, metric, value
Points = list[Point] | PointColumns  # a batch as it is queued and sent to the scoring workers

FIELDS: tuple[str, ...] = ("ts", "service", "metric", "value")
NAME_FIELDS: tuple[str, ...] = ("service", "metric")
TS_ALIAS = "timestamp"

MAX_TS = 1e11  # year 5138 in seconds, 1973 in milliseconds: anything above is milliseconds
MAX_FUTURE_S = 600.0  # clock skew tolerated; a later point would make every real one "late"
MAX_NAME_LENGTH = 256
TS_HINT = "epoch seconds, not milliseconds"
RAW_CHARS = 500  # of a refused line kept with its rejection (the dead-letter file caps it again)

WHITESPACE = " \t\r\n"  # stripped around text timestamps and numbers (the same set in the readers)
TS_TEXT = (
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])"
    r"(?:\.([0-9]{1,9}))?(?:([Zz])|([+-])([01][0-9]|2[0-3]):?([0-5][0-9]))?"
)
"""The one grammar of a text timestamp (Python's ``re`` and Polars' regex read it alike)."""
NUMBER_TEXT = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
"""The one grammar of a number written as text (a CSV value, an epoch timestamp as text)."""
_TS_TEXT = re.compile(TS_TEXT)
_NUMBER_TEXT = re.compile(NUMBER_TEXT)
_EPOCH_DAY = date(1970, 1, 1).toordinal()


class PointError(ValueError):
    """A point failed validation: ``field`` is the one to fix, ``code`` the reason's name."""

    def __init__(self, field: str, code: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Rejection:
    """One refused point: where it was (``index``, 0-based), the failing field, the reason's code
    and text, and the raw input. ``unit`` says what the index counts: lines of an NDJSON body or
    file (shown 1-based), or points of a JSON array; or it is ``series`` for the points of a new
    series the engine refused as a whole (``count`` of them, ``raw`` names the series)."""

    index: int
    field: str
    code: str
    reason: str
    raw: Any
    unit: str = "line"
    count: int = 1

    @property
    def where(self) -> str:
        if self.unit == "series":
            return "new series"
        return f"line {self.index + 1}" if self.unit == "line" else f"point {self.index}"

    def as_dict(self) -> dict[str, Any]:
        place = {"line": self.index + 1, "point": self.index}.get(self.unit, self.raw)
        out = {self.unit: place, "field": self.field, "code": self.code, "reason": self.reason}
        return out if self.count == 1 else {**out, "count": self.count}


class NameRules:
    """Limits on service and metric names: length, printable text, an optional pattern.

    Why: a name is a key of per-series state, a label of the engine's metrics and a column of the
    journal; a megabyte name or a lone surrogate is accepted once and costs memory or breaks
    ``/metrics`` for good. Names seen valid are remembered (a bounded set), so the hot path pays a
    set lookup per name, not a regular expression.
    """

    KNOWN_MAX = 200_000

    def __init__(self, max_length: int = MAX_NAME_LENGTH, pattern: str | None = None) -> None:
        self.max_length = max_length
        self.pattern = pattern
        self._pattern = re.compile(pattern) if pattern else None
        self.known: set[str] = set()

    def problem(self, name: str) -> str | None:
        """Why ``name`` is refused, or None when it is a valid name."""
        if len(name) > self.max_length:
            return f"is {len(name):,} characters long (at most {self.max_length:,})"
        if not name.isprintable():
            bad = next(c for c in name if not c.isprintable())
            return (
                f"holds the non-printable character U+{ord(bad):04X} at position {name.index(bad)}; "
                "names are printable text"
            )
        if self._pattern is not None and self._pattern.fullmatch(name) is None:
            return f"does not match the name pattern {self.pattern!r}"
        return None

    def ok(self, name: str) -> bool:
        if name in self.known:
            return True
        if self.problem(name) is not None:
            return False
        if len(self.known) >= self.KNOWN_MAX:
            self.known.clear()
        self.known.add(name)
        return True


DEFAULT_NAMES = NameRules()


class _HugeInt:
    """An integer literal longer than Python converts (``sys.get_int_max_str_digits``)."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _bounded_int(text: str) -> int | _HugeInt:
    digits = len(text.lstrip("-"))
    return _HugeInt(digits) if digits > 4300 else int(text)


_DECODER = json.JSONDecoder(parse_int=_bounded_int)
"""For lines that failed the plain decoder: an over-long integer becomes a value its field refuses."""


# ----------------------------------------------------------------------------------- timestamps


def ts_of_text(text: str) -> float:
    """Epoch seconds of a text timestamp (the ``TS_TEXT`` or ``NUMBER_TEXT`` grammar)."""
    stripped = text.strip(WHITESPACE)
    if _NUMBER_TEXT.fullmatch(stripped):
        return float(stripped)
    match = _TS_TEXT.fullmatch(stripped)
    if match is None:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise PointError(
            "ts",
            "unparsable_ts",
            f"{shown!r} is not a timestamp: use epoch seconds or 'YYYY-MM-DDTHH:MM:SS[.ffffff][Z|±HH:MM]'",
        )
    year, month, day, hour, minute, second, fraction, _zulu, sign, off_h, off_m = match.groups()
    if year == "0000":
        raise PointError("ts", "ts_out_of_range", f"{text!r} is before 1970: {TS_HINT}")
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_DAY
    except ValueError as exc:
        raise PointError("ts", "unparsable_ts", f"{text!r} is not a date ({exc})") from None
    seconds = days * 86400 + int(hour) * 3600 + int(minute) * 60 + int(second)
    if sign:
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    micros = int((fraction or "")[:6].ljust(6, "0"))
    return (seconds * 1_000_000 + micros) / 1e6


def _ts(value: Any, latest: float) -> float:
    if isinstance(value, str):
        out = ts_of_text(value)
    elif isinstance(value, bool) or not isinstance(value, int | float | _HugeInt):
        raise PointError(
            "ts",
            "unparsable_ts",
            f"must be epoch seconds or an ISO 8601 timestamp, got {_json_type(value)}",
        )
    else:
        try:
            out = float(value) if not isinstance(value, _HugeInt) else math.inf
        except OverflowError:
            out = math.inf
    if not 0 < out < MAX_TS:
        shown = f"{out!r}" if math.isfinite(out) else "a number beyond any time"
        raise PointError(
            "ts", "ts_out_of_range", f"{shown} is not a valid time; must be in (0, {MAX_TS:.0e}): {TS_HINT}"
        )
    if out > latest:
        ahead = out - (latest - MAX_FUTURE_S)
        raise PointError(
            "ts",
            "ts_out_of_range",
            f"{out!r} is {ahead:.0f} s in the future (at most {MAX_FUTURE_S:.0f} s allowed); "
            f"{TS_HINT}, and check the sender's clock",
        )
    return out


# ----------------------------------------------------------------------------------- one point


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if isinstance(value, _HugeInt):
        return "number"
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _missing(value: Any) -> bool:
    return value is None or value == ""


def _name(item: dict[str, Any], field: str, names: NameRules) -> str:
    value = item[field]
    if type(value) is not str:
        raise PointError(field, f"non_string_{field}", f"must be a string, got {_json_type(value)}")
    if not names.ok(value):
        raise PointError(field, f"invalid_{field}", str(names.problem(value)))
    return value


def _value(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | _HugeInt):
        raise PointError("value", "non_numeric_value", f"must be a number, got {_json_type(value)}")
    if isinstance(value, _HugeInt):
        raise PointError(
            "value", "non_finite_value", f"an integer of {value.digits:,} digits is beyond a double's range"
        )
    try:
        out = float(value)
    except OverflowError:
        raise PointError(
            "value", "non_finite_value", f"an integer of {len(str(abs(value))):,} digits is beyond ±1.8e308"
        ) from None
    if not math.isfinite(out):
        raise PointError("value", "non_finite_value", "must be finite (NaN and infinity are refused)")
    return out


def labels_of(value: Any) -> dict[str, Any] | None:
    """A point's labels: an object, or text holding one (blank text: none); else PointError."""
    if value is None or isinstance(value, dict):
        return value or None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            return parsed or None
    raise PointError("labels", "malformed_labels", f"must be a JSON object, got {_json_type(value)}")


def parse_point(item: Any, now: float | None = None, names: NameRules = DEFAULT_NAMES) -> Point:
    """Validate one decoded point against the wall clock ``now`` (default: the current time); raise
    ``PointError`` naming the failing field (the module docstring lists the rules, in order)."""
    now = time.time() if now is None else now
    if not isinstance(item, dict):
        raise PointError("line", "malformed_line", f"must be a JSON object, got {_json_type(item)}")
    if item.get("ts") is None and item.get(TS_ALIAS) is not None:
        item = {**item, "ts": item[TS_ALIAS]}
    for field in FIELDS:
        if _missing(item.get(field)):
            raise PointError(field, f"missing_{field}", "is missing")
    ts = item["ts"]
    if type(ts) is not float or not 0 < ts <= now + MAX_FUTURE_S:
        ts = _ts(ts, now + MAX_FUTURE_S)
    service = _name(item, "service", names)
    metric = _name(item, "metric", names)
    value = _value(item["value"])
    if "labels" in item:
        labels_of(item["labels"])
    return ts, service, metric, value


# ----------------------------------------------------------------------------------- many points


def parse_items(
    items: Iterable[Any], names: NameRules = DEFAULT_NAMES, *, unit: str = "point"
) -> tuple[list[Point], list[Rejection]]:
    """Decoded points (a JSON array's elements) in, valid points and rejections out."""
    good, _, bad = check_items(items, names, unit=unit)
    return good, bad


def check_items(
    items: Iterable[Any], names: NameRules, *, unit: str, index: Sequence[int] | None = None
) -> tuple[list[Point], list[int], list[Rejection]]:
    """``parse_items`` that also gives the position in ``items`` of each good point; a rejection's
    index is ``index[position]`` when given (the line an item came from), else its position."""
    good: list[Point] = []
    kept: list[int] = []
    bad: list[Rejection] = []
    append = good.append
    now = time.time()
    latest = now + MAX_FUTURE_S
    known = names.known
    for i, item in enumerate(items):
        where = i if index is None else index[i]
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
                and (service in known or names.ok(service))
                and (metric in known or names.ok(metric))
                and service
                and metric
                and 0.0 < ts <= latest
                and value - value == 0.0
            ):
                append((ts, service, metric, value))
                kept.append(i)
                continue
        try:
            append(parse_point(item, now, names))
            kept.append(i)
        except PointError as exc:
            bad.append(Rejection(where, exc.field, exc.code, exc.reason, item, unit))
    return good, kept, bad


def parse_body(
    body: bytes, content_type: str = "", names: NameRules = DEFAULT_NAMES
) -> tuple[Points, list[Rejection]]:
    """Decode an HTTP body: a JSON array, ``{"points": [...]}``, one object, or NDJSON lines.

    A large NDJSON body of well-formed points comes back as ``PointColumns`` (decoded without
    holding the interpreter lock, see ``engine.telemetry.columns``); anything else as a list. A
    JSON array that does not decode as a whole is decoded element by element, so one broken or
    hostile element is refused alone.
    """
    if "ndjson" in content_type:
        columns = read_ndjson(body, time.time(), MAX_FUTURE_S, names.ok)
        if columns is not None:
            return columns, []
    text = body.decode("utf-8", errors="replace")
    stripped = text.lstrip()
    if "ndjson" not in content_type and stripped[:1] in ("[", "{"):
        try:
            decoded = json.loads(text)
        except (ValueError, RecursionError):
            array = _points_array(text)
            if array is not None:
                return _parse_elements(text, array, names)
        else:
            if isinstance(decoded, dict) and isinstance(decoded.get("points"), list):
                return parse_items(decoded["points"], names)
            return parse_items(decoded if isinstance(decoded, list) else [decoded], names)
    return parse_lines(text.splitlines(), names)


def parse_lines(
    lines: Iterable[str], names: NameRules = DEFAULT_NAMES
) -> tuple[list[Point], list[Rejection]]:
    """NDJSON: one point per line; blank lines are skipped; a line that is not JSON is rejected."""
    parsed = parse_lines_in_full(lines, names)
    return parsed.points, parsed.rejections


class ParsedLines(NamedTuple):
    """What ``parse_lines_in_full`` read: the good points, the 0-based line and the decoded object
    of each (the file reader takes its labels from there), and the rejections."""

    points: list[Point]
    lines: list[int]
    items: list[Any]
    rejections: list[Rejection]


def parse_lines_in_full(lines: Iterable[str], names: NameRules = DEFAULT_NAMES) -> ParsedLines:
    """``parse_lines`` with each good point's line and decoded object.

    Decoding all lines as one JSON array is ~3x faster than line by line; when any line is broken
    the chunk is decoded line by line so that only that line is refused (and named).
    """
    numbered = [(i, line) for i, line in enumerate(lines) if line.strip()]
    out = ParsedLines([], [], [], [])
    for start in range(0, len(numbered), _CHUNK):
        chunk = numbered[start : start + _CHUNK]
        decoded = list(_decode_lines(chunk))
        index = [i for i, _, error in decoded if error is None]
        items = [item for _, item, error in decoded if error is None]
        good, kept, bad = check_items(items, names, unit="line", index=index)
        out.points.extend(good)
        out.lines.extend(index[k] for k in kept)
        out.items.extend(items[k] for k in kept)
        errors = [error for _, _, error in decoded if error is not None]
        if bad or errors:
            raw = dict(chunk)
            bad = [Rejection(r.index, r.field, r.code, r.reason, raw[r.index][:RAW_CHARS]) for r in bad]
            out.rejections.extend(sorted(bad + errors, key=lambda r: r.index))
    return out


_CHUNK = 1000  # lines decoded per json.loads call: bounds how long one call holds the GIL


def _decode_lines(numbered: list[tuple[int, str]]) -> Iterator[tuple[int, Any, Rejection | None]]:
    """Each non-blank line decoded: ``(line, object, None)`` or ``(line, None, rejection)``."""
    try:
        items = json.loads("[" + ",".join(line for _, line in numbered) + "]")
    except (ValueError, RecursionError):
        items = None
    if items is not None and len(items) == len(numbered):
        for (i, _), item in zip(numbered, items, strict=True):
            yield i, item, None
        return
    for i, line in numbered:
        try:
            yield i, _decode_one(line), None
        except ValueError as exc:
            yield i, None, Rejection(i, "line", "malformed_line", str(exc), line[:RAW_CHARS])


def _decode_one(line: str) -> Any:
    """One line as one JSON value; ValueError saying why not (broken, extra data, too deep)."""
    try:
        return _DECODER.decode(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise ValueError("not JSON this parser reads: nested deeper than ~1,000 levels") from None


# ----------------------------------------------------------------------------------- JSON arrays

_POINTS_KEY = re.compile(r'\s*\{\s*"points"\s*:\s*\[')
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{},]')  # a whole string, or one structural character
_SPACE = re.compile(r"\s*")


def _points_array(text: str) -> int | None:
    """Where the elements of a body's points array start (after its ``[``), or None."""
    stripped = len(text) - len(text.lstrip())
    if text[stripped : stripped + 1] == "[":
        return stripped + 1
    match = _POINTS_KEY.match(text)
    return match.end() if match else None


def _parse_elements(text: str, start: int, names: NameRules) -> tuple[list[Point], list[Rejection]]:
    """The elements of a JSON array decoded one at a time: one that does not decode (too deep, an
    over-long integer, broken) is refused as itself; the elements beside it are kept. Anything
    after the array is ignored (the document was not valid JSON; its points were)."""
    items: list[Any] = []
    bad: list[Rejection] = []
    pos = _SPACE.match(text, start).end()  # type: ignore[union-attr]
    index = 0
    while pos < len(text) and text[pos] != "]":
        try:
            item, end = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError) as exc:
            end = _value_end(text, pos)
            why = "nested deeper than ~1,000 levels" if isinstance(exc, RecursionError) else str(exc)
            bad.append(
                Rejection(
                    index, "point", "malformed_line", f"not JSON ({why})", text[pos:end][:RAW_CHARS], "point"
                )
            )
            item = _SKIPPED
        items.append(item)
        pos = _SPACE.match(text, end).end()  # type: ignore[union-attr]
        if pos < len(text) and text[pos] == ",":
            pos = _SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
        elif pos < len(text) and text[pos] != "]":
            break  # garbage between elements: the rest cannot be told apart
        index += 1
    kept = [i for i, item in enumerate(items) if item is not _SKIPPED]
    good, _, more = check_items([items[i] for i in kept], names, unit="point", index=kept)
    return good, sorted(bad + more, key=lambda r: r.index)


_SKIPPED = object()


def _value_end(text: str, pos: int) -> int:
    """Where the JSON value starting at ``pos`` ends: the ``,`` or ``]`` after it at depth 0."""
    depth = 0
    for token in _TOKEN.finditer(text, pos):
        char = token.group()
        if char in "[{":
            depth += 1
        elif char in "]}":
            if depth == 0:
                return token.start()
            depth -= 1
        elif char == "," and depth == 0:
            return token.start()
    return len(text)
