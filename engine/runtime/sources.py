"""The engine's telemetry sources: the bounded ingest queue, file tail, Prometheus scrape.

Every source parses with ``engine.telemetry.points`` (one parser, the engine's name rules).

Why a bounded queue measured in points: when scoring cannot keep up, the HTTP source answers 429
(``offer`` refuses the whole request, so a retry is safe) and the file sources wait; what ``offer``
accepted stays in memory until it is scored, and a SIGTERM drains it before exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import ConfigError, SpecError
from engine.specs import load_yaml, problems_from
from engine.telemetry.points import DEFAULT_NAMES, NameRules, Point, Points, Rejection, parse_lines
from engine.telemetry.prometheus import read_points

if TYPE_CHECKING:
    from engine.runtime.config import Sources

log = logging.getLogger(__name__)

Sink = Callable[[list[Point], list[Rejection]], bool]  # a source's points and refusals; False: stop


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
    sink: Sink,
    stop: threading.Event,
    *,
    from_start: bool = False,
    poll_s: float = 0.2,
    batch_lines: int = 5000,
    names: NameRules = DEFAULT_NAMES,
) -> None:
    """Follow an NDJSON file (``-`` is stdin) and hand parsed batches to ``sink`` until ``stop``.

    Like ``tail -F``: starts at the end unless ``from_start``, survives truncation and rotation by
    reopening when the file shrinks or is replaced. ``sink`` blocks while the queue is full.
    """
    if path == "-":
        import sys

        _pump(sys.stdin, sink, stop, batch_lines=batch_lines, follow=False, poll_s=poll_s, names=names)
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
                names=names,
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
    sink: Sink,
    stop: threading.Event,
    *,
    batch_lines: int,
    follow: bool,
    poll_s: float,
    rotated: Callable[[], bool] | None = None,
    names: NameRules = DEFAULT_NAMES,
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
            good, bad = parse_lines(lines, names)
            lines = []
            if not sink(good, bad):
                return
            continue
        if not follow:
            if pending:
                sink(*parse_lines([pending], names))
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

    def convert(
        self, text: str, now: float, names: NameRules = DEFAULT_NAMES
    ) -> tuple[list[Point], list[Rejection]]:
        """Map one scrape's exposition text to points stamped ``now`` (unless a sample has its own
        time), checked by the point parser: a NaN sample or a missing service is refused and named,
        like any point; samples no rule maps are not points and are skipped."""

        def to_items(sample: Any) -> list[dict[str, Any]]:
            rules = self.metrics.get(sample.name)
            if rules is None:
                return []
            service = self.service or sample.labels.get(self.service_label or "")
            return [
                {
                    "ts": sample.timestamp or now,
                    "service": service,
                    "metric": rule.metric,
                    "value": sample.value * rule.scale,
                }
                for rule in (rules if isinstance(rules, list) else [rules])
                if all(sample.labels.get(k) == v for k, v in rule.match.items())
            ]

        points, _, _, rejections = read_points(text, to_items, names)
        return points, rejections


def scrape_loop(
    url: str,
    mapping: PromMapping,
    interval_s: float,
    names: NameRules,
    sink: Sink,
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
                points, rejections = mapping.convert(response.text, started, names)
            except httpx.HTTPError as exc:
                log.warning("scrape of %s failed: %s", url, exc)
                if on_error is not None:
                    on_error(url)
            else:
                if not sink(points, rejections):
                    return
            stop.wait(max(0.0, interval_s - (time.time() - started)))


def source_loops(
    sources: Sources,
    names: NameRules,
    sink_for: Callable[[str], Sink],
    stop: threading.Event,
    on_scrape_error: Callable[[str], None],
) -> list[tuple[str, Callable[[], None]]]:
    """The thread bodies of the configured sources (``EngineSettings.sources``), each named: a
    tail per file, a scrape loop per Prometheus target; each hands its points to ``sink_for(its
    source label)`` until ``stop``."""
    loops: list[tuple[str, Callable[[], None]]] = []
    for path in sources.files:
        sink = sink_for(f"file:{path}")
        loops.append(
            (
                f"tail:{path}",
                lambda p=path, k=sink: tail_ndjson(p, k, stop, from_start=sources.from_start, names=names),
            )
        )
    for t in sources.prometheus:
        m, sink = PromMapping.from_yaml(t.mapping), sink_for(f"prometheus:{t.url}")
        loops.append(
            (
                f"scrape:{t.url}",
                lambda t=t, m=m, k=sink: scrape_loop(
                    t.url, m, t.interval_s, names, k, stop, on_error=on_scrape_error
                ),
            )
        )
    return loops
