"""Readers that turn telemetry files into validated long-format points plus a list of rejected rows.

CSV, Parquet and NAB files are parsed with vectorised Polars code and their bad rows found with
expressions (``validate_points``); JSON lines go through the engine's point parser
(``engine.telemetry.points``) and Prometheus text through the engine's scrape parser
(``engine.telemetry.prometheus``), so a pushed or scraped line and the same line in a file are
accepted or refused alike (a property test compares them). Each row keeps its line number so a
rejected row can be shown to a person with its file, line, raw text and reason.

Formats and how they map onto ``(ts, service, metric, value, labels)``:

* ``csv`` / ``parquet`` / ``jsonl``: columns (keys) ``ts`` (or ``timestamp``), ``service``,
  ``metric``, ``value``, optional ``labels`` (a JSON object, as text or, in JSON lines, as an
  object). Other columns are ignored. Labels are stored in one canonical form (sorted keys,
  compact, ``{}`` as none: ``store.canonical_labels``), so the same series written as JSON lines,
  CSV or a Prometheus scrape is one series.
  Timestamps: ISO 8601 (``2026-01-01 00:00:00[.ffffff]``, ``T`` separator, ``Z`` or ``±HH:MM``
  offsets converted to UTC) or a number of epoch seconds; native Parquet timestamps are used as
  they are (time zones converted to naive UTC). The "line" of a Parquet row is its 1-based row number.
* incidents ``parquet`` (what ``selfheal synth --out`` writes beside the points as
  ``*.incidents.parquet``): a Parquet file with the columns ``service, kind, start, end, source``
  and no ``value`` is read as incident windows, not points.
* ``nab``: a NAB corpus folder (``data/<category>/<name>.csv`` with ``timestamp,value`` and
  ``labels/combined_windows.json``). Service ``<category>/<name>`` (the corpus' own key without
  ``.csv``), metric ``value``; each window becomes an incident of kind ``nab_window``, source ``nab``.
* ``prom``: Prometheus text exposition. Service from label ``service``, else ``job``, else the file
  stem; metric is the sample name (``http_requests_total``, ``latency_bucket``); the remaining labels
  become ``labels`` as JSON with sorted keys. Timestamps from the sample, else ``default_ts``
  (``--ts``), else the file's modification time.

Rejection reasons (one per row, first that applies): ``malformed_line`` (not JSON / not a
Prometheus sample), ``missing_<field>``, ``unparsable_ts``, ``non_numeric_value``,
``non_finite_value``, ``malformed_labels`` (labels that are not a JSON object); JSON lines also
have the engine's other codes (``non_string_<field>``, ``invalid_<field>``, ``ts_out_of_range``;
the rules are in ``engine.telemetry.points``). Incident rows: ``missing_<field>``,
``unparsable_start`` / ``unparsable_end``, ``end_before_start``. Blank lines are skipped and not counted.

Known limits: a CSV line number is the row's position plus the header, so a quoted field holding
a newline shifts the numbers after it; fields beyond the header's count are dropped (polars'
``truncate_ragged_lines``); a Parquet ``service`` column of numbers is read as text; a NAB labels
file must be a JSON object of lists of ``[start, end]`` pairs, else the whole corpus is refused
(naming the key) rather than loaded without its windows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from engine.errors import InputError
from engine.telemetry.store import (
    INCIDENT_COLUMNS,
    POINTS_SCHEMA,
    canonical_labels,
    normalize_labels,
)

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("csv", "parquet", "jsonl", "nab", "prom")
TEXT_FORMATS: frozenset[str] = frozenset({"csv", "jsonl", "nab", "prom"})
"""Formats whose rows are lines of text, so a row can be shown as the line it came from."""

EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".prom": "prom",
}

FIELDS: tuple[str, ...] = ("ts", "service", "metric", "value")
ALIASES: dict[str, str] = {"timestamp": "ts"}

NAB_KIND = "nab_window"
NAB_SOURCE = "nab"
NAB_METRIC = "value"

REJECT_SCHEMA: dict[str, pl.DataType] = {
    "file": pl.String(),
    "line": pl.Int64(),
    "reason": pl.String(),
    "raw": pl.String(),
}


Step = Callable[[str], None]
"""Told the name of the step a reader starts (``"validate"``), so a caller can show progress."""


def no_step(name: str) -> None:
    """The default ``on_step``: nobody is watching."""


@dataclass
class ReadResult:
    """What one input (a file or a NAB corpus) yielded."""

    path: Path
    format: str
    points: pl.DataFrame  # POINTS_SCHEMA plus ``line`` (and ``file`` for NAB), valid rows only
    rejects: pl.DataFrame  # REJECT_SCHEMA
    read: int  # data rows seen: valid + rejected (blank lines excluded)
    incidents: pl.DataFrame | None = None  # INCIDENTS_SCHEMA (NAB windows, incident files)
    content: str = "points"  # "incidents" for an incident file: its rows are windows, not points

    @property
    def source(self) -> str:
        """Provenance stored with every point: ``<format>:<absolute path>``."""
        return f"{self.format}:{self.path}"


# -- format detection -------------------------------------------------------------------------------


def is_nab_corpus(path: Path) -> bool:
    return (
        path.is_dir() and (path / "labels" / "combined_windows.json").is_file() and (path / "data").is_dir()
    )


def detect_format(path: Path) -> str:
    """The format of a file or folder from its extension or layout; InputError when unknown."""
    if is_nab_corpus(path):
        return "nab"
    suffix = path.suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    if suffix == ".txt" and path.is_file():
        with path.open(encoding="utf-8", errors="replace") as handle:
            head = handle.read(4096)
        if "# TYPE " in head or "# HELP " in head:
            return "prom"
    raise InputError(
        f"cannot tell the format of {path}",
        hint=f"pass --format ({'|'.join(FORMATS)}) or use one of the extensions {', '.join(EXTENSIONS)}",
    )


def expand_paths(paths: Iterable[Path], fmt: str | None = None) -> list[tuple[Path, str]]:
    """Pair each input with its format; a plain folder stands for the known files inside it."""
    out: list[tuple[Path, str]] = []
    for path in paths:
        if not path.exists():
            raise InputError(f"{path} does not exist", hint="check the path")
        if path.is_dir() and fmt != "nab" and not is_nab_corpus(path):
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
            if not files:
                raise InputError(
                    f"folder {path} holds no telemetry files",
                    hint=f"expected {', '.join(EXTENSIONS)} files or a NAB corpus (data/, labels/)",
                )
            out.extend((p, fmt or EXTENSIONS[p.suffix.lower()]) for p in files)
        else:
            out.append((path, fmt or detect_format(path)))
    return out


def read_path(
    path: Path, fmt: str, *, default_ts: datetime | None = None, on_step: Step = no_step
) -> ReadResult:
    """Read one input in the given format (see the module docstring for the mapping)."""
    path = path.resolve()
    if fmt == "csv":
        return read_csv(path, on_step=on_step)
    if fmt == "parquet":
        return read_parquet(path, on_step=on_step)
    if fmt == "jsonl":
        return read_jsonl(path, on_step=on_step)
    if fmt == "nab":
        return read_nab(path, on_step=on_step)
    if fmt == "prom":
        return read_prom(path, default_ts=default_ts, on_step=on_step)
    raise InputError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")


# -- validation -------------------------------------------------------------------------------------


def parse_ts(column: pl.Series) -> pl.Series:
    """Turn a column into naive-UTC ``Datetime("us")``; null where a value does not parse.

    Text is tried against one accepted layout after another, each only on the values that are
    still unparsed, so a file in one layout pays for one parse (trying every layout on every row
    and coalescing would cost five).
    """
    dtype = column.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return column.cast(pl.Datetime("us"))
    if isinstance(dtype, pl.Date):
        return column.cast(pl.Datetime("us"))
    if dtype.is_numeric():
        return column.to_frame("x").select(_epoch_seconds(pl.col("x").cast(pl.Float64))).to_series()
    text = column.cast(pl.String).str.strip_chars().alias("x")
    out = pl.Series(column.name, [None] * len(text), dtype=pl.Datetime("us"))
    pending = text.is_not_null()
    for layout in _TEXT_LAYOUTS:
        todo = pending.arg_true()
        if todo.len() == 0:
            break
        parsed = text.gather(todo).to_frame().select(layout(pl.col("x"))).to_series()
        out = out.scatter(todo, parsed)
        pending = pending.scatter(todo, parsed.is_null())
    return out


def _naive(layout: str) -> Callable[[pl.Expr], pl.Expr]:
    return lambda text: text.str.to_datetime(layout, time_unit="us", strict=False)


def _with_offset(layout: str) -> Callable[[pl.Expr], pl.Expr]:
    return lambda text: (
        text.str.replace(r"[zZ]$", "+00:00")
        .str.to_datetime(layout, time_unit="us", strict=False)
        .dt.convert_time_zone("UTC")
        .dt.replace_time_zone(None)
    )


def _epoch_seconds(seconds: pl.Expr) -> pl.Expr:
    micros = pl.when(seconds.is_finite()).then((seconds * 1_000_000).round(0)).cast(pl.Int64, strict=False)
    return pl.from_epoch(micros, time_unit="us")


_TEXT_LAYOUTS: tuple[Callable[[pl.Expr], pl.Expr], ...] = (
    _naive("%Y-%m-%d %H:%M:%S%.f"),
    _naive("%Y-%m-%dT%H:%M:%S%.f"),
    _with_offset("%Y-%m-%dT%H:%M:%S%.f%z"),
    _with_offset("%Y-%m-%d %H:%M:%S%.f%z"),
    lambda text: _epoch_seconds(text.cast(pl.Float64, strict=False)),
)


def _missing(name: str, dtype: pl.DataType) -> pl.Expr:
    """Null, or (for text) empty. Typed columns are only null-checked, and text by byte length:
    trimming or casting 10M values just to compare them with "" would dominate the whole ingest."""
    col = pl.col(name)
    if dtype == pl.String:
        return col.is_null() | (col.str.len_bytes() == 0)
    return col.is_null()


def validate_points(raw: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split raw rows into valid points and rejects, vectorised.

    ``raw`` has columns ``ts, service, metric, value`` (any dtype; strings are parsed), optional
    ``labels``, and ``line`` (plus anything else, kept in the rejects so the caller can rebuild the
    raw text). Returns ``(points, rejects)``: points in the store's schema plus ``line`` (and
    ``file`` when ``raw`` has it), so that a row the store turns down can still be shown with its
    place; rejects are the raw rows with a ``reason`` column. Fully empty rows (blank lines) are in
    neither.
    """
    if "labels" not in raw.columns:
        raw = raw.with_columns(labels=pl.lit(None, pl.String))
    labels = raw["labels"].cast(pl.String)
    bad_labels: pl.Series | pl.Expr = pl.lit(False)
    if labels.null_count() < labels.len():  # only files that carry labels pay for parsing them
        labels, bad_labels = normalize_labels(labels)
    value_dtype = raw.schema["value"]
    value = (
        pl.col("value").cast(pl.Float64, strict=False)
        if value_dtype.is_numeric()
        else pl.col("value").cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    )
    parsed = raw.with_columns(
        __ts=parse_ts(raw["ts"]),
        __value=value,
        __labels=labels,
        __bad_labels=bad_labels,
    )
    schema = raw.schema
    reason = (
        pl.when(_missing("ts", schema["ts"]))
        .then(pl.lit("missing_ts"))
        .when(_missing("service", schema["service"]))
        .then(pl.lit("missing_service"))
        .when(_missing("metric", schema["metric"]))
        .then(pl.lit("missing_metric"))
        .when(_missing("value", schema["value"]))
        .then(pl.lit("missing_value"))
        .when(pl.col("__ts").is_null())
        .then(pl.lit("unparsable_ts"))
        .when(pl.col("__value").is_null())
        .then(pl.lit("non_numeric_value"))
        .when(~pl.col("__value").is_finite())
        .then(pl.lit("non_finite_value"))
        .when(pl.col("__bad_labels"))
        .then(pl.lit("malformed_labels"))
    )
    blank = pl.all_horizontal(_missing(c, schema[c]) for c in FIELDS)
    parsed = parsed.with_columns(__blank=blank, reason=reason)
    n_blank, n_bad = parsed.select(
        pl.col("__blank").sum(), (pl.col("reason").is_not_null() & ~pl.col("__blank")).sum()
    ).row(0)
    if n_blank:  # filtering copies every column: only when there is something to drop
        parsed = parsed.filter(~pl.col("__blank"))
    parsed = parsed.drop("__blank")
    good = parsed.filter(pl.col("reason").is_null()) if n_bad else parsed
    points = good.select(
        pl.col("__ts").alias("ts"),
        pl.col("service").cast(pl.String),
        pl.col("metric").cast(pl.String),
        pl.col("__value").alias("value"),
        pl.col("__labels").alias("labels"),
        pl.col("line"),
        *([pl.col("file")] if "file" in raw.columns else []),
    )
    rejects = (parsed.filter(pl.col("reason").is_not_null()) if n_bad else parsed.clear()).drop(
        "__ts", "__value", "__labels", "__bad_labels"
    )
    return points, rejects


def _rename_aliases(df: pl.DataFrame) -> pl.DataFrame:
    mapping = {a: c for a, c in ALIASES.items() if a in df.columns and c not in df.columns}
    return df.rename(mapping) if mapping else df


def _require_columns(df: pl.DataFrame, path: Path, required: Iterable[str] = FIELDS) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = [c for c in df.columns if c != "line"]  # "line" is the reader's own, not the file's
        raise InputError(
            f"{path} lacks column(s) {', '.join(missing)} (found: {', '.join(found) or 'none'})",
            hint="telemetry files need ts (or timestamp), service, metric, value; incident files "
            f"need {', '.join(INCIDENT_COLUMNS)}; a NAB folder is read with --format nab",
        )


def _empty_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECT_SCHEMA)


def _lines_at(path: Path, numbers: Iterable[int]) -> dict[int, str]:
    """The raw text of the given 1-based lines; reads only up to the last one asked for."""
    wanted = set(numbers)
    out: dict[int, str] = {}
    if not wanted:
        return out
    last = max(wanted)
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        for number, line in enumerate(handle, 1):
            if number in wanted:
                out[number] = line.rstrip("\r\n")
            if number >= last:
                break
    return out


def _rejects_with_text(rejects: pl.DataFrame, path_col: str | None, single: Path | None) -> pl.DataFrame:
    """Attach each rejected line's raw text, fetched from its file (CSV-like inputs)."""
    if rejects.height == 0:
        return _empty_rejects()
    rows = rejects.select(
        file=pl.col(path_col) if path_col else pl.lit(str(single)),
        line=pl.col("line").cast(pl.Int64),
        reason=pl.col("reason"),
    )
    return rows.with_columns(raw=line_texts(rows))


def line_texts(rows: pl.DataFrame) -> pl.Series:
    """The raw text of each ``(file, line)`` of ``rows``, read from the files (null past the end);
    each file is read once, only up to the last line asked for."""
    texts: dict[tuple[str, int], str] = {}
    for file, lines in rows.group_by("file").agg("line").iter_rows():
        texts.update({(file, n): t for n, t in _lines_at(Path(file), lines).items()})
    return pl.Series(
        "raw", [texts.get(key) for key in rows.select("file", "line").iter_rows()], dtype=pl.String
    )


# -- readers ----------------------------------------------------------------------------------------


def _read_csv_strings(path: Path) -> pl.DataFrame:
    """All columns as strings with the 1-based file line of every row (header is line 1)."""
    try:
        df = pl.read_csv(path, infer_schema=False, truncate_ragged_lines=True, row_index_name="__row")
    except pl.exceptions.NoDataError as exc:
        raise InputError(f"{path} is empty", hint="check the file") from exc
    except pl.exceptions.ComputeError as exc:
        raise InputError(
            f"{path} is not readable as CSV: {exc}", hint="check the file or pass --format"
        ) from exc
    return df.with_columns(line=(pl.col("__row").cast(pl.Int64) + 2)).drop("__row")


def read_csv(path: Path, *, on_step: Step = no_step) -> ReadResult:
    """Points, or incident windows when the file has the incident columns and no ``value``."""
    raw = _rename_aliases(_read_csv_strings(path))
    if is_incident_frame(raw):
        on_step("validate")
        return _read_incidents(path, "csv", raw)
    _require_columns(raw, path)
    on_step("validate")
    points, rejects = validate_points(raw)
    return ReadResult(
        path, "csv", points, _rejects_with_text(rejects, None, path), points.height + rejects.height
    )


def read_parquet(path: Path, *, on_step: Step = no_step) -> ReadResult:
    """Points, or incident windows when the file has the incident columns and no ``value``."""
    try:
        raw = _rename_aliases(pl.read_parquet(path))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(
            f"{path} is not readable as Parquet: {exc}", hint="check the file or pass --format"
        ) from exc
    raw = raw.with_row_index("line", offset=1)
    if is_incident_frame(raw):
        on_step("validate")
        return _read_incidents(path, "parquet", raw)
    _require_columns(raw, path)
    on_step("validate")
    points, rejects = validate_points(raw)
    rejects = _parquet_rejects(path, raw, rejects)
    return ReadResult(path, "parquet", points, rejects, points.height + rejects.height)


def _parquet_rejects(path: Path, raw: pl.DataFrame, rejects: pl.DataFrame) -> pl.DataFrame:
    """Rejects with the row as JSON for ``raw`` (a Parquet row has no text of its own)."""
    if rejects.height == 0:
        return _empty_rejects()
    original = [c for c in raw.columns if c != "line"]
    return rejects.select(
        file=pl.lit(str(path)),
        line=pl.col("line").cast(pl.Int64),
        reason=pl.col("reason"),
        raw=pl.struct(original).struct.json_encode(),
    )


def is_incident_frame(df: pl.DataFrame) -> bool:
    """Incident windows, not points: every incident column and no ``value`` (what ``selfheal synth
    --out`` writes as ``*.incidents.parquet``, or the same columns in a CSV file)."""
    return all(c in df.columns for c in INCIDENT_COLUMNS) and "value" not in df.columns


def _read_incidents(path: Path, fmt: str, raw: pl.DataFrame) -> ReadResult:
    """Validate incident rows (``raw`` has their ``line``) like points: each bad row is rejected
    with its reason, the rest load."""
    parsed = raw.with_columns(__start=parse_ts(raw["start"]), __end=parse_ts(raw["end"]))
    checks = [(_missing(name, raw.schema[name]), f"missing_{name}") for name in INCIDENT_COLUMNS]
    checks += [
        (pl.col("__start").is_null(), "unparsable_start"),
        (pl.col("__end").is_null(), "unparsable_end"),
        (pl.col("__end") < pl.col("__start"), "end_before_start"),
    ]
    (condition, text), *rest = checks
    reason = pl.when(condition).then(pl.lit(text))
    for condition, text in rest:  # the first check that applies names the row's reason
        reason = reason.when(condition).then(pl.lit(text))
    parsed = parsed.with_columns(reason=reason)
    incidents = parsed.filter(pl.col("reason").is_null()).select(
        pl.col("service").cast(pl.String),
        pl.col("kind").cast(pl.String),
        pl.col("__start").alias("start"),
        pl.col("__end").alias("end"),
        pl.col("source").cast(pl.String),
    )
    bad = parsed.filter(pl.col("reason").is_not_null())
    rejects = _rejects_with_text(bad, None, path) if fmt == "csv" else _parquet_rejects(path, raw, bad)
    points = pl.DataFrame(schema={**POINTS_SCHEMA, "line": pl.Int64})
    return ReadResult(path, fmt, points, rejects, raw.height, incidents, content="incidents")


def read_jsonl(path: Path, *, on_step: Step = no_step) -> ReadResult:
    """JSON lines: one point object per line, parsed by the engine's point parser
    (``engine.telemetry.points``), so a line loads from a file exactly when the engine would accept
    it pushed, and is refused with the same reason code otherwise."""
    from engine.telemetry.points import labels_of, parse_lines_in_full

    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    on_step("validate")
    parsed = parse_lines_in_full(lines)
    labels = [
        canonical_labels(labels_of(item.get("labels")) or {}) if type(item) is dict else None
        for item in parsed.items
    ]
    frame = pl.DataFrame(
        {
            "ts": [p[0] for p in parsed.points],
            "service": [p[1] for p in parsed.points],
            "metric": [p[2] for p in parsed.points],
            "value": [p[3] for p in parsed.points],
            "labels": labels,
            "line": [i + 1 for i in parsed.lines],
        },
        schema={
            "ts": pl.Float64,
            "service": pl.String,
            "metric": pl.String,
            "value": pl.Float64,
            "labels": pl.String,
            "line": pl.Int64,
        },
    )
    points = frame.with_columns(ts=_epoch_seconds(pl.col("ts")))
    rejects = pl.DataFrame(
        [(str(path), r.index + 1, r.code, lines[r.index]) for r in parsed.rejections],
        schema=REJECT_SCHEMA,
        orient="row",
    )
    return ReadResult(path, "jsonl", points, rejects, points.height + rejects.height)


def read_nab(path: Path, *, on_step: Step = no_step) -> ReadResult:
    """A NAB corpus folder: every ``data/<category>/*.csv`` series plus its labelled windows."""
    if not is_nab_corpus(path):
        raise InputError(
            f"{path} is not a NAB corpus folder",
            hint="a NAB folder holds data/<category>/*.csv and labels/combined_windows.json",
        )
    frames: list[pl.DataFrame] = []
    keys: list[str] = []
    for csv in sorted((path / "data").glob("*/*.csv")):
        key = f"{csv.parent.name}/{csv.name}"
        raw = _rename_aliases(_read_csv_strings(csv))
        _require_columns(raw, csv, ("ts", "value"))
        keys.append(key)
        frames.append(
            raw.select(
                "ts",
                "value",
                "line",
                service=pl.lit(key.removesuffix(".csv")),
                metric=pl.lit(NAB_METRIC),
                file=pl.lit(str(csv)),
            )
        )
    if not frames:
        raise InputError(f"NAB corpus {path} holds no data/<category>/*.csv files", hint="check the folder")
    incidents = _nab_windows(path / "labels" / "combined_windows.json", keys)  # refuse early
    on_step("validate")
    points, rejects = validate_points(pl.concat(frames))
    rejects = _rejects_with_text(rejects, "file", None)
    return ReadResult(path, "nab", points, rejects, points.height + rejects.height, incidents)


_NAB_LABELS_HINT = (
    "restore the NAB labels file: a JSON object mapping 'category/name.csv' to a list of "
    '["YYYY-MM-DD HH:MM:SS.ffffff", "YYYY-MM-DD HH:MM:SS.ffffff"] [start, end] pairs'
)


def _nab_windows(labels: Path, keys: list[str]) -> pl.DataFrame:
    """The labelled windows of the series present, as incidents. The whole file is checked first
    (shape, every data file listed, timestamps, end >= start) so that a broken file refuses the
    corpus with the key at fault instead of crashing half way or loading the series without their
    ground truth. Entries without a data file are ignored (the full corpus' labels serve a subset)."""
    try:
        windows = json.loads(labels.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{labels} is not valid JSON: {exc}", hint=_NAB_LABELS_HINT) from exc
    if not isinstance(windows, dict):
        raise InputError(
            f"{labels} must hold a JSON object of series to windows, got a {_json_type(windows)}",
            hint=_NAB_LABELS_HINT,
        )
    spans: list[tuple[str, int, str, str]] = []
    for key, value in windows.items():
        if not isinstance(value, list):
            raise InputError(
                f"{labels}: {key!r} must be a list of [start, end] pairs, got a {_json_type(value)}",
                hint=_NAB_LABELS_HINT,
            )
        for i, span in enumerate(value):
            if not (isinstance(span, list) and len(span) == 2 and all(isinstance(t, str) for t in span)):
                raise InputError(
                    f"{labels}: {key!r}[{i}] must be a [start, end] pair of timestamp strings, "
                    f"got {json.dumps(span)[:80]}",
                    hint=_NAB_LABELS_HINT,
                )
            spans.append((key, i, span[0], span[1]))
    unlisted = sorted(set(keys) - set(windows))
    if unlisted:  # a series without its ground truth would read as "no anomaly" everywhere
        raise InputError(
            f"{labels}: no entry for {unlisted[0]} ({len(unlisted)} data file(s) without one)",
            hint=f'add "{unlisted[0]}": [] when the file has no anomaly, or move the file out of data/',
        )
    frame = pl.DataFrame(
        spans, schema={"key": pl.String, "i": pl.Int64, "start": pl.String, "end": pl.String}, orient="row"
    )
    parsed = frame.with_columns(__start=parse_ts(frame["start"]), __end=parse_ts(frame["end"]))
    for side in ("start", "end"):
        bad = parsed.filter(pl.col(f"__{side}").is_null())
        if bad.height:
            key, i, text = bad.select("key", "i", side).row(0)
            raise InputError(
                f"{labels}: {key!r}[{i}] {side} {text!r} is not a timestamp "
                f"({bad.height} unparsable {side} value(s) in the file)",
                hint=_NAB_LABELS_HINT,
            )
    backwards = parsed.filter(pl.col("__end") < pl.col("__start"))
    if backwards.height:
        key, i, start, end = backwards.select("key", "i", "start", "end").row(0)
        raise InputError(
            f"{labels}: {key!r}[{i}] ends before it starts ({start} .. {end}; "
            f"{backwards.height} such window(s) in the file)",
            hint="swap the two timestamps of that window, or restore the NAB labels file",
        )
    return parsed.filter(pl.col("key").is_in(keys)).select(
        service=pl.col("key").str.strip_suffix(".csv"),
        kind=pl.lit(NAB_KIND),
        start=pl.col("__start"),
        end=pl.col("__end"),
        source=pl.lit(NAB_SOURCE),
    )


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages about a file's shape."""
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def read_prom(path: Path, *, default_ts: datetime | None = None, on_step: Step = no_step) -> ReadResult:
    """Prometheus text exposition, one sample per line (so every reject has its line number); the
    lines are parsed by the engine's scrape parser (``engine.telemetry.prometheus.samples``)."""
    from engine.telemetry.prometheus import lines, samples

    if default_ts is None:
        default_ts = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    if default_ts.tzinfo is not None:
        default_ts = default_ts.astimezone(UTC).replace(tzinfo=None)
    fallback = default_ts.replace(tzinfo=UTC).timestamp()
    rows: list[tuple[int, float, str, str, float, str | None]] = []
    bad: list[tuple[int, str, str]] = []
    text = path.read_text(encoding="utf-8", errors="replace")
    numbered = lines(text)
    for index, sample, error in samples(text):
        if error is not None:
            bad.append((index + 1, error.code, numbered[index]))
            continue
        labels = dict(sample.labels)
        service = labels.pop("service", None) or labels.pop("job", None) or path.stem
        ts = float(sample.timestamp) if sample.timestamp is not None else fallback
        rows.append((index + 1, ts, service, sample.name, float(sample.value), canonical_labels(labels)))
    raw = pl.DataFrame(
        rows,
        schema={
            "line": pl.Int64,
            "ts": pl.Float64,
            "service": pl.String,
            "metric": pl.String,
            "value": pl.Float64,
            "labels": pl.String,
        },
        orient="row",
    )
    on_step("validate")
    points, rejects = validate_points(raw)
    texts = _lines_at(path, rejects["line"].to_list()) if rejects.height else {}
    parsed_rejects = [
        (n, r, texts.get(n, "")) for n, r in zip(rejects["line"], rejects["reason"], strict=True)
    ]
    all_rejects = sorted([*bad, *parsed_rejects])
    frame = pl.DataFrame(
        [(str(path), n, r, t) for n, r, t in all_rejects], schema=REJECT_SCHEMA, orient="row"
    )
    return ReadResult(path, "prom", points, frame, points.height + frame.height)
