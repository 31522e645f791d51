"""Telemetry sources: parse and validate points, the bounded ingest queue, file tail, Prometheus scrape.

Why one parser for every source: a point is ``{ts, service, metric, value}`` wherever it comes from,
and a bad one must be refused the same way everywhere (its failing field named, counted, written to
the dead-letter file) without ever stopping the good points beside it.

Why a bounded queue measured in points: when scoring cannot keep up, the HTTP source answers 429
(``offer`` refuses the whole request, so a retry is safe) and the file sources wait; what ``offer``
accepted stays in memory until it is scored, and a SIGTERM drains it before exit.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import ConfigError, SpecError
from engine.runtime.columns import PointColumns, read_ndjson
from engine.specs import load_yaml, problems_from

log = logging.getLogger(__name__)

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
    holding the interpreter lock, see ``engine.runtime.columns``); anything else as a list.
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


class DeadLetter:
    """Append-only NDJSON file of rejected points, so nobody has to reproduce a bad payload from logs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, source: str, rejections: Sequence[Rejection]) -> None:
        if not rejections:
            return
        now = time.time()
        lines = [
            json.dumps(
                {"received": now, "source": source, "field": r.field, "reason": r.reason, "raw": r.raw},
                default=str,
            )
            for r in rejections
        ]
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")


class IngestQueue:
    """Bounded FIFO of accepted point batches; the limit is in points, not batches."""

    def __init__(self, max_points: int) -> None:
        self.max_points = max_points
        self._batches: deque[tuple[float, Points]] = deque()
        self._size = 0
        self._cond = threading.Condition()
        self.accepted_total = 0

    @property
    def depth(self) -> int:
        return self._size

    def offer(self, points: Points, *, arrival: float | None = None) -> bool:
        """Accept all of ``points`` or none (False: full, answer 429)."""
        if not points:
            return True
        with self._cond:
            if self._size + len(points) > self.max_points and self._size > 0:
                return False
            self._batches.append((time.perf_counter() if arrival is None else arrival, points))
            self._size += len(points)
            self.accepted_total += len(points)
            self._cond.notify()
        return True

    def put(self, points: list[Point], *, stop: threading.Event) -> bool:
        """Blocking offer for sources that can wait (files): back-pressure without dropping."""
        while not stop.is_set():
            if self.offer(points):
                return True
            time.sleep(0.01)
        return False

    def take(self, max_points: int, timeout: float) -> list[tuple[float, Points]]:
        """Up to ``max_points`` points (whole batches), waiting at most ``timeout`` for the first."""
        with self._cond:
            if not self._batches:
                self._cond.wait(timeout)
            out: list[tuple[float, Points]] = []
            taken = 0
            while self._batches and (taken == 0 or taken + len(self._batches[0][1]) <= max_points):
                arrival, batch = self._batches.popleft()
                out.append((arrival, batch))
                taken += len(batch)
            self._size -= taken
            return out


# ------------------------------------------------------------------------------- file / stdin tail


def tail_ndjson(
    path: str,
    sink: Callable[[list[Point], list[Rejection]], bool],
    stop: threading.Event,
    *,
    from_start: bool = False,
    poll_s: float = 0.2,
    batch_lines: int = 5000,
) -> None:
    """Follow an NDJSON file (``-`` is stdin) and hand parsed batches to ``sink`` until ``stop``.

    Like ``tail -F``: starts at the end unless ``from_start``, survives truncation and rotation by
    reopening when the file shrinks or is replaced. ``sink`` blocks while the queue is full.
    """
    if path == "-":
        import sys

        _pump(sys.stdin, sink, stop, batch_lines=batch_lines, follow=False, poll_s=poll_s)
        return
    file = Path(path)
    while not stop.is_set():
        try:
            fh = open(file, encoding="utf-8")  # noqa: SIM115 - closed below, reopened on rotation
        except FileNotFoundError:
            stop.wait(poll_s)
            continue
        with fh:
            if not from_start:
                fh.seek(0, 2)
            from_start = True  # a rotated file is read from its start
            _pump(
                fh,
                sink,
                stop,
                batch_lines=batch_lines,
                follow=True,
                poll_s=poll_s,
                rotated=_rotation(file, fh),
            )


def _rotation(file: Path, fh: TextIO) -> Callable[[], bool]:
    """A check that the followed file was replaced or truncated (time to reopen it)."""
    inode = _inode(file)

    def rotated() -> bool:
        try:
            return _inode(file) != inode or file.stat().st_size < fh.tell()
        except FileNotFoundError:
            return True

    return rotated


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _pump(
    fh: TextIO,
    sink: Callable[[list[Point], list[Rejection]], bool],
    stop: threading.Event,
    *,
    batch_lines: int,
    follow: bool,
    poll_s: float,
    rotated: Callable[[], bool] | None = None,
) -> None:
    pending = ""
    lines: list[str] = []
    while not stop.is_set():
        chunk = fh.readline()
        if chunk:
            if not chunk.endswith("\n"):
                pending += chunk  # a writer is mid-line; wait for the rest
                continue
            lines.append(pending + chunk)
            pending = ""
            if len(lines) < batch_lines:
                continue
        if lines:
            good, bad = parse_lines(lines)
            lines = []
            if not sink(good, bad):
                return
            continue
        if not follow:
            if pending:
                sink(*parse_lines([pending]))
            return
        if rotated is not None and rotated():
            return
        stop.wait(poll_s)


# ------------------------------------------------------------------------------- Prometheus scrape


class _MetricMap(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str
    scale: float = 1.0
    match: dict[str, str] = Field(default_factory=dict, description="labels a sample must carry")


class PromMapping(BaseModel):
    """How a target's Prometheus samples become points: which service, which of our metric names."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    service: str | None = Field(None, description="fixed service name for every sample of this target")
    service_label: str | None = Field(None, description="label whose value is the service")
    metrics: dict[str, list[_MetricMap] | _MetricMap]

    @classmethod
    def from_yaml(cls, path: Path) -> PromMapping:
        hint = "keys: service or service_label, metrics: {prom_name: {metric, scale, match}}"
        try:
            mapping = cls.model_validate(load_yaml(path, hint=hint) or {})
        except ValidationError as exc:
            raise SpecError(problems_from(exc, file=str(path), model=cls), hint=hint) from exc
        if not mapping.service and not mapping.service_label:
            raise ConfigError(
                f"{path}: set `service` or `service_label`", hint="which service the samples are"
            )
        return mapping

    def convert(self, text: str, now: float) -> list[Point]:
        """Map one scrape's exposition text to points stamped ``now`` (samples carry no time)."""
        from prometheus_client.parser import text_string_to_metric_families

        out: list[Point] = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                rules = self.metrics.get(sample.name)
                if rules is None:
                    continue
                for rule in rules if isinstance(rules, list) else [rules]:
                    if any(sample.labels.get(k) != v for k, v in rule.match.items()):
                        continue
                    service = self.service or sample.labels.get(self.service_label or "")
                    if not service or not math.isfinite(sample.value):
                        continue
                    out.append(
                        (sample.timestamp or now, service, rule.metric, float(sample.value) * rule.scale)
                    )
        return out


def scrape_loop(
    url: str,
    mapping: PromMapping,
    interval_s: float,
    sink: Callable[[list[Point], list[Rejection]], bool],
    stop: threading.Event,
    on_error: Callable[[str], None] | None = None,
) -> None:
    """Scrape ``url`` every ``interval_s`` until ``stop``; an unreachable target is logged, not fatal."""
    import httpx

    with httpx.Client(timeout=max(1.0, interval_s)) as client:
        while not stop.is_set():
            started = time.time()
            try:
                response = client.get(url)
                response.raise_for_status()
                points = mapping.convert(response.text, started)
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("scrape of %s failed: %s", url, exc)
                if on_error is not None:
                    on_error(url)
            else:
                if not sink(points, []):
                    return
            stop.wait(max(0.0, interval_s - (time.time() - started)))
