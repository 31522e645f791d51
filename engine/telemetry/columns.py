"""Columnar point batches: the fast path for large NDJSON telemetry bodies.

Why: the engine's HTTP thread, scoring thread, deciding thread and actuator threads share one
interpreter lock. Decoding and validating points one Python object at a time (~2 µs a point) and
then partitioning and pickling them for the scoring workers kept that lock busy for a quarter of
every second at 50,000 points/s, and every dispatch waited in line behind it. Arrow's JSON reader
decodes a body with the lock released, validation and the split between workers are a few
vectorised passes, and a column pickles as a buffer copy; the per-point work moves to the scoring
workers, which have an interpreter each.

Strictness: this path accepts a body only when every line is a well-typed, flat point the
line-by-line parser (``engine.telemetry.points``) would accept as it is; anything else (a missing
or mistyped field, NaN, a timestamp out of range, a blank or broken line, two objects on a line, a
duplicate key, a nested value or labels, a name the name rules refuse) returns None and the body
goes through that parser, which names each bad line. Both paths
accept the same points (property test in ``tests/test_runtime_columns.py``).
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

Point = tuple[float, str, str, float]  # as engine.telemetry.points.Point (no import cycle)

MIN_BYTES = 4096  # below ~50 points the reader's fixed cost exceeds what it saves
_SCHEMA = pa.schema(
    [("ts", pa.float64()), ("service", pa.string()), ("metric", pa.string()), ("value", pa.float64())]
)
_PARSE = pj.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="ignore")
# An empty or whitespace-only line between two newlines (tabs are refused earlier). A literal first
# byte lets the search jump from newline to newline: ~0.6 ms for 5,000 lines, where ``(?:^|\n)``
# tried every position (~7 ms, holding the GIL).
_BLANK_LINE = re.compile(rb"\n[ \r]*\n")


def partition(service: str, parts: int) -> int:
    """The part of ``parts`` a service's points go to: stable across processes and restarts (crc32,
    not ``hash``), so one worker (or replica) sees all of a service's points, in order."""
    return zlib.crc32(service.encode()) % parts


class PointColumns:
    """Points as four columns; iterates as ``(ts, service, metric, value)`` tuples like a list."""

    __slots__ = ("_services", "table")

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self._services: pa.DictionaryArray | None = None

    def _service_codes(self) -> pa.DictionaryArray:
        """The service column dictionary-encoded (what ``split`` partitions by)."""
        if self._services is None:
            self._services = pc.dictionary_encode(self.table["service"].chunk(0))
        return self._services

    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self) -> Iterator[Point]:
        t = self.table
        return zip(
            t["ts"].to_pylist(),
            t["service"].to_pylist(),
            t["metric"].to_pylist(),
            t["value"].to_pylist(),
            strict=True,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (PointColumns, (self.table,))  # Arrow tables pickle as buffer copies

    def _series_codes(self) -> tuple[np.ndarray, list[str], list[str], int]:
        """One int64 code per row for its ``(service, metric)``, with the two dictionaries."""
        services = self._service_codes()
        metrics = pc.dictionary_encode(self.table["metric"].chunk(0))
        width = len(metrics.dictionary)
        key = services.indices.to_numpy().astype(np.int64) * width
        key += metrics.indices.to_numpy()
        return key, services.dictionary.to_pylist(), metrics.dictionary.to_pylist(), width

    def series(self) -> list[tuple[str, str]]:
        """The distinct ``(service, metric)`` series of this batch."""
        key, services, metrics, width = self._series_codes()
        return [(services[k // width], metrics[k % width]) for k in np.unique(key).tolist()]

    def without(self, series: list[tuple[str, str]]) -> tuple[PointColumns, dict[tuple[str, str], int]]:
        """This batch without the points of ``series``, and how many points each of those had."""
        key, services, metrics, width = self._series_codes()
        service_code = {name: i for i, name in enumerate(services)}
        metric_code = {name: i for i, name in enumerate(metrics)}
        codes = np.array([service_code[s] * width + metric_code[m] for s, m in series], dtype=np.int64)
        dropped = np.isin(key, codes)
        counts = dict(zip(series, (np.count_nonzero(key == c) for c in codes), strict=True))
        return PointColumns(self.table.filter(pa.array(~dropped))), counts

    def split(self, shard_of: dict[str, int], shards: int) -> list[PointColumns | None]:
        """Partition by service (``partition``, the list path's rule), order kept;
        ``shard_of`` caches the rule per service name and is updated here."""
        services = self._service_codes()
        names = services.dictionary.to_pylist()
        for name in names:
            if name not in shard_of:
                shard_of[name] = partition(name, shards)
        per_row = np.array([shard_of[name] for name in names], dtype=np.int64)[services.indices.to_numpy()]
        out: list[PointColumns | None] = []
        for i in range(shards):
            rows = np.flatnonzero(per_row == i)
            out.append(PointColumns(self.table.take(rows)) if len(rows) else None)
        return out


def read_ndjson(
    body: bytes, now: float, max_future_s: float, name_ok: Callable[[str], bool]
) -> PointColumns | None:
    """The body as columns, or None when any line is not a point the line parser accepts as is
    (``name_ok`` is the parser's check of a service or metric name)."""
    if len(body) < MIN_BYTES:
        return None
    raw = np.frombuffer(body, dtype=np.uint8)
    lines = body.count(b"\n") + (not body.endswith(b"\n"))
    if np.count_nonzero(raw < 0x20) != body.count(b"\n") + body.count(b"\r"):
        return None  # tabs and other control bytes: Python's JSON refuses them inside strings
    if body.count(b"{") + body.count(b"[") != lines or b'"labels"' in body:
        # Nested values: the reader skips unknown fields however deep (Python's decoder refuses
        # ~1,000 levels) and labels, which the line parser checks. Points are flat objects.
        return None
    read = pj.ReadOptions(use_threads=False, block_size=len(body) + 1)
    try:
        table = pj.read_json(io.BytesIO(body), read_options=read, parse_options=_PARSE)
        table.validate(full=True)  # the reader passes invalid UTF-8 through; the line parser replaces it
    except pa.ArrowException:  # a broken line, a mistyped field, a duplicate key, not an object
        return None
    # With no blank line, one row per line means no line held two objects (the line parser refuses
    # such a line); both conditions are needed, a blank line and a double line cancel in a count.
    if _BLANK_LINE.search(b"\n" + (body[:-1] if body.endswith(b"\n") else body) + b"\n"):
        return None
    if table.num_rows != lines:
        return None
    table = table.combine_chunks()
    if any(column.null_count for column in table.columns):  # a missing field (or null)
        return None
    if not all(pc.all(pc.is_finite(table[c])).as_py() for c in ("ts", "value")):
        return None
    ts = pc.min_max(table["ts"]).as_py()
    if not (ts["min"] > 0.0 and ts["max"] <= now + max_future_s):
        return None
    if min(pc.min(pc.binary_length(table[c])).as_py() for c in ("service", "metric")) == 0:
        return None
    if not all(name_ok(name) for c in ("service", "metric") for name in pc.unique(table[c]).to_pylist()):
        return None  # a name too long, not printable or off the configured pattern
    return PointColumns(table)
