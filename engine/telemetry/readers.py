"""Readers that turn telemetry files into validated long-format points plus a list of rejected rows.

Every reader parses with vectorised Polars code and then finds the bad rows with expressions
(``validate_points``), keeping each row's line number so a rejected row can be shown to a person
with its file, line, raw text and reason. Per-line Python runs only for Prometheus text (its
parser is line oriented and scrape files are small) and, for CSV, only to fetch the raw text of the
rejected lines.

Formats and how they map onto ``(ts, service, metric, value, labels)``:

* ``csv`` / ``parquet`` / ``jsonl``: columns (keys) ``ts`` (or ``timestamp``), ``service``,
  ``metric``, ``value``, optional ``labels`` (JSON text). Other columns are ignored.
  Timestamps: ISO 8601 (``2026-01-01 00:00:00[.ffffff]``, ``T`` separator, ``Z`` or ``±HH:MM``
  offsets converted to UTC) or a number of epoch seconds; native Parquet timestamps are used as
  they are (time zones converted to naive UTC). The "line" of a Parquet row is its 1-based row number.
* ``nab``: a NAB corpus folder (``data/<category>/<name>.csv`` with ``timestamp,value`` and
  ``labels/combined_windows.json``). Service ``<category>/<name>`` (the corpus' own key without
  ``.csv``), metric ``value``; each window becomes an incident of kind ``nab_window``, source ``nab``.
* ``prom``: Prometheus text exposition. Service from label ``service``, else ``job``, else the file
  stem; metric is the sample name (``http_requests_total``, ``latency_bucket``); the remaining labels
  become ``labels`` as JSON with sorted keys. Timestamps from the sample, else ``default_ts``
  (``--ts``), else the file's modification time.

Rejection reasons (one per row, first that applies): ``missing_<field>``, ``unparsable_ts``,
``non_numeric_value``, ``non_finite_value``, ``malformed_line`` (not JSON / not a Prometheus
sample). Blank lines are skipped and not counted.

Known limits: a CSV line number is the row's position plus the header, so a quoted field holding
a newline shifts the numbers after it; fields beyond the header's count are dropped (polars'
``truncate_ragged_lines``); JSON ``labels`` objects are stored as compact JSON in the key order
written, so the same series must be written the same way to be recognised as already stored.
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
from engine.telemetry.store import INCIDENTS_SCHEMA

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("csv", "parquet", "jsonl", "nab", "prom")

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


@dataclass
class ReadResult:
    """What one input (a file or a NAB corpus) yielded."""

    path: Path
    format: str
    points: pl.DataFrame  # POINTS_SCHEMA, valid rows only
    rejects: pl.DataFrame  # REJECT_SCHEMA
    read: int  # data rows seen: valid + rejected (blank lines excluded)
    incidents: pl.DataFrame | None = None  # INCIDENTS_SCHEMA (NAB windows)

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


def read_path(path: Path, fmt: str, *, default_ts: datetime | None = None) -> ReadResult:
    """Read one input in the given format (see the module docstring for the mapping)."""
    path = path.resolve()
    if fmt == "csv":
        return read_csv(path)
    if fmt == "parquet":
        return read_parquet(path)
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "nab":
        return read_nab(path)
    if fmt == "prom":
        return read_prom(path, default_ts=default_ts)
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
    raw text). Returns ``(points, rejects)``: points in the store's schema; rejects are the raw rows
    with a ``reason`` column. Fully empty rows (blank lines) are in neither.
    """
    if "labels" not in raw.columns:
        raw = raw.with_columns(labels=pl.lit(None, pl.String))
    value_dtype = raw.schema["value"]
    value = (
        pl.col("value").cast(pl.Float64, strict=False)
        if value_dtype.is_numeric()
        else pl.col("value").cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    )
    parsed = raw.with_columns(
        __ts=parse_ts(raw["ts"]),
        __value=value,
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
        pl.col("labels").cast(pl.String),
    )
    rejects = (parsed.filter(pl.col("reason").is_not_null()) if n_bad else parsed.clear()).drop(
        "__ts", "__value"
    )
    return points, rejects


def _rename_aliases(df: pl.DataFrame) -> pl.DataFrame:
    mapping = {a: c for a, c in ALIASES.items() if a in df.columns and c not in df.columns}
    return df.rename(mapping) if mapping else df


def _require_columns(df: pl.DataFrame, path: Path, required: Iterable[str] = FIELDS) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(
            f"{path} lacks column(s) {', '.join(missing)} (found: {', '.join(df.columns) or 'none'})",
            hint="telemetry files need ts (or timestamp), service, metric, value; "
            "a NAB folder is read with --format nab",
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
    texts: dict[tuple[str, int], str] = {}
    for file, lines in rows.group_by("file").agg("line").iter_rows():
        texts.update({(file, n): t for n, t in _lines_at(Path(file), lines).items()})
    raw = [texts.get(key) for key in rows.select("file", "line").iter_rows()]
    return rows.with_columns(raw=pl.Series(raw, dtype=pl.String))


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


def read_csv(path: Path) -> ReadResult:
    raw = _rename_aliases(_read_csv_strings(path))
    _require_columns(raw, path)
    points, rejects = validate_points(raw)
    return ReadResult(
        path, "csv", points, _rejects_with_text(rejects, None, path), points.height + rejects.height
    )


def read_parquet(path: Path) -> ReadResult:
    try:
        raw = _rename_aliases(pl.read_parquet(path))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(
            f"{path} is not readable as Parquet: {exc}", hint="check the file or pass --format"
        ) from exc
    _require_columns(raw, path)
    raw = raw.with_row_index("line", offset=1)
    points, rejects = validate_points(raw)
    if rejects.height:
        original = [c for c in raw.columns if c != "line"]
        rejects = rejects.select(
            file=pl.lit(str(path)),
            line=pl.col("line").cast(pl.Int64),
            reason=pl.col("reason"),
            raw=pl.struct(original).struct.json_encode(),
        )
    else:
        rejects = _empty_rejects()
    return ReadResult(path, "parquet", points, rejects, points.height + rejects.height)


def read_jsonl(path: Path) -> ReadResult:
    """JSON lines: one object per line. Lines that are not a JSON object are ``malformed_line``."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = pl.Series("raw", text.split("\n"), dtype=pl.String).str.strip_suffix("\r")
    frame = lines.to_frame().with_row_index("line", offset=1).filter(pl.col("raw").str.strip_chars() != "")
    fields = _jsonl_fields(frame)
    if fields is None:  # some line is not a JSON object: set those aside, decode the rest
        is_object = (
            pl.col("raw").str.strip_chars_start().str.starts_with("{")
            & pl.col("raw").str.json_path_match("$").is_not_null()
        )
        frame = frame.with_columns(__object=is_object)
        malformed = frame.filter(~pl.col("__object")).drop("__object")
        frame = frame.filter(pl.col("__object")).drop("__object")
        fields = _jsonl_fields(frame)
        if fields is None:
            fields = _jsonl_fields_slow(frame)
    else:
        malformed = frame.clear()
    points, rejects = validate_points(fields)
    rejects = pl.concat(
        [
            malformed.select("line", "raw", reason=pl.lit("malformed_line")),
            rejects.select("line", "raw", "reason"),
        ]
    ).sort("line")
    rejects = rejects.select(
        file=pl.lit(str(path)), line=pl.col("line").cast(pl.Int64), reason="reason", raw="raw"
    )
    return ReadResult(path, "jsonl", points, rejects, points.height + rejects.height)


_JSONL_STRUCT = pl.Struct({name: pl.String for name in (*FIELDS, *ALIASES)})


def _jsonl_fields(frame: pl.DataFrame) -> pl.DataFrame | None:
    """Decode every line in one vectorised pass (scalars arrive as text, then ``validate_points``
    parses them); None when some line does not decode, so the caller can isolate it."""
    try:
        decoded = frame.with_columns(__doc=pl.col("raw").str.json_decode(_JSONL_STRUCT)).unnest("__doc")
    except pl.exceptions.PolarsError:
        return None
    # labels are objects (not text), so they take a path match; only files that have any pay for it
    has_labels = frame.select(pl.col("raw").str.contains('"labels"', literal=True).any()).item()
    labels = pl.col("raw").str.json_path_match("$.labels") if has_labels else pl.lit(None, pl.String)
    return decoded.with_columns(ts=pl.coalesce("ts", *ALIASES), labels=labels).drop(*ALIASES)


def _jsonl_fields_slow(frame: pl.DataFrame) -> pl.DataFrame:
    """Field by field with path matches: a value that does not decode becomes null, not an error."""
    fields = [pl.col("raw").str.json_path_match(f"$.{name}").alias(name) for name in (*FIELDS, "labels")]
    aliases = [pl.col("raw").str.json_path_match(f"$.{alias}") for alias in ALIASES]
    return frame.with_columns(*fields).with_columns(ts=pl.coalesce("ts", *aliases))


def read_nab(path: Path) -> ReadResult:
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
    points, rejects = validate_points(pl.concat(frames))
    rejects = _rejects_with_text(rejects, "file", None)
    incidents = _nab_windows(path / "labels" / "combined_windows.json", keys)
    return ReadResult(path, "nab", points, rejects, points.height + rejects.height, incidents)


def _nab_windows(labels: Path, keys: list[str]) -> pl.DataFrame:
    try:
        windows = json.loads(labels.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{labels} is not valid JSON: {exc}", hint="restore the NAB labels file") from exc
    present = set(keys)
    rows = [
        (key.removesuffix(".csv"), start, end)
        for key, spans in windows.items()
        if key in present
        for start, end in spans
    ]
    if not rows:
        return pl.DataFrame(schema=INCIDENTS_SCHEMA)
    frame = pl.DataFrame(rows, schema=["service", "start", "end"], orient="row")
    parsed = frame.select(
        "service",
        kind=pl.lit(NAB_KIND),
        start=parse_ts(frame["start"]),
        end=parse_ts(frame["end"]),
        source=pl.lit(NAB_SOURCE),
    )
    if parsed.select(pl.any_horizontal(pl.col("start", "end").is_null()).any()).item():
        raise InputError(
            f"{labels} holds window timestamps that do not parse", hint="restore the NAB labels file"
        )
    return parsed


def read_prom(path: Path, *, default_ts: datetime | None = None) -> ReadResult:
    """Prometheus text exposition, one sample per line (so every reject has its line number)."""
    from prometheus_client.parser import text_string_to_metric_families

    if default_ts is None:
        default_ts = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    if default_ts.tzinfo is not None:
        default_ts = default_ts.astimezone(UTC).replace(tzinfo=None)
    fallback = default_ts.replace(tzinfo=UTC).timestamp()
    rows: list[tuple[int, float, str, str, float, str | None]] = []
    bad: list[tuple[int, str, str]] = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                samples = [s for fam in text_string_to_metric_families(text + "\n") for s in fam.samples]
            except (ValueError, IndexError, KeyError) as exc:
                log.debug("%s:%d: %s", path, number, exc)
                bad.append((number, "malformed_line", line.rstrip("\r\n")))
                continue
            for sample in samples:
                labels = dict(sample.labels)
                service = labels.pop("service", None) or labels.pop("job", None) or path.stem
                ts = float(sample.timestamp) if sample.timestamp is not None else fallback
                tags = json.dumps(labels, sort_keys=True, separators=(",", ":")) if labels else None
                rows.append((number, ts, service, sample.name, float(sample.value), tags))
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
