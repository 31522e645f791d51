"""``selfheal ingest``: read telemetry files, store the valid rows, quarantine the bad ones, report.

DuckDB allows one writing process and a writer locks out every other one, so the store is opened
once up front (to fail fast when someone else holds it) and then only while each input is written,
after it has been read and validated. Each input is written in one transaction (points and
incidents together, or nothing): an input that fails to read or to store is reported with its
error while the others load, and a re-run skips what is already there.

A row whose key ``(ts, service, metric, labels)`` is already stored (or repeated in the input) is
a *duplicate* when its value is the one kept and a *conflict* when it is not; the first value
written stays either way, and conflicts are quarantined so that they are seen, not dropped.

Quarantine: one JSON-lines file per run under ``Home.quarantine`` named
``ingest-<UTC time>-<pid>.jsonl``; each line is ``{"file", "line", "reason", "raw"}``, and a
``conflicting_value`` line also has ``"stored"`` (the value kept) and ``"value"`` (the one turned
down). It is written when something was rejected, in a ``finally``: a run that stops early still
keeps the rows it had rejected.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from engine.errors import EngineError, InputError, StoreLockedError
from engine.telemetry.readers import (
    TEXT_FORMATS,
    ReadResult,
    Step,
    expand_paths,
    line_texts,
    no_step,
    read_path,
)
from engine.telemetry.store import PointsWrite, TelemetryStore

LARGE_INPUT_BYTES = 50_000_000
LARGE_INPUT_ROWS = 1_000_000
"""An input this large (bytes of a file or of a NAB folder, or rows of a Parquet file, which
compresses well) gets its own step progress bar: reading and validating it alone takes seconds."""

log = logging.getLogger(__name__)


@dataclass
class FileReport:
    """Counts for one input."""

    path: Path
    format: str
    content: str = "points"  # or "incidents": an incident file (synth --out's *.incidents.parquet)
    read: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    incidents_read: int = 0
    incidents_inserted: int = 0
    error: str | None = None  # "not read: ..." or "not stored: ...": nothing of this input was stored

    @property
    def valid(self) -> int:
        """Rows that passed validation, whatever the store then did with them."""
        return self.inserted + self.duplicates + self.conflicts


@dataclass
class IngestReport:
    """Counts for a whole run, and where the rejected rows went."""

    files: list[FileReport]
    quarantine: Path | None

    @property
    def read(self) -> int:
        return sum(f.read for f in self.files)

    @property
    def valid(self) -> int:
        return sum(f.valid for f in self.files)

    @property
    def inserted(self) -> int:
        return sum(f.inserted for f in self.files)

    @property
    def duplicates(self) -> int:
        return sum(f.duplicates for f in self.files)

    @property
    def conflicts(self) -> int:
        return sum(f.conflicts for f in self.files)

    @property
    def rejected(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for f in self.files:
            total.update(f.rejected)
        return total

    @property
    def incidents_read(self) -> int:
        return sum(f.incidents_read for f in self.files)

    @property
    def incidents_inserted(self) -> int:
        return sum(f.incidents_inserted for f in self.files)

    def lines(self) -> list[str]:
        """The human-readable report the CLI prints."""
        out = []
        for f in self.files:
            if f.error:
                out.append(f"{f.path} [{f.format}]: {f.error}")
                continue
            rejected_here = sum(f.rejected.values())
            if f.content == "incidents":
                out.append(
                    f"{f.path} [{f.format}, incidents]: read {f.read}, incidents inserted "
                    f"{f.incidents_inserted} of {f.incidents_read}, rejected {rejected_here}"
                )
                continue
            text = (
                f"{f.path} [{f.format}]: read {f.read}, inserted {f.inserted}, "
                f"duplicates skipped {f.duplicates}, conflicts {f.conflicts}, rejected {rejected_here}"
            )
            if f.incidents_read:
                text += f", incidents inserted {f.incidents_inserted} of {f.incidents_read}"
            out.append(text)
        rejected = self.rejected
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(rejected.items()))
        kept = " (kept the stored value; see the quarantine)" if self.conflicts else ""
        out.append(
            f"total: read {self.read}, inserted {self.inserted}, duplicates skipped {self.duplicates}, "
            f"conflicts {self.conflicts}{kept}, "
            f"rejected {sum(rejected.values())}{f' ({detail})' if detail else ''}"
            + (f", incidents inserted {self.incidents_inserted}" if self.incidents_read else "")
        )
        if self.quarantine is not None:
            out.append(f"quarantine: {self.quarantine}")
        return out

    def check(self) -> None:
        """Raise InputError when nothing valid was read at all (every input unreadable or every row bad)."""
        if self.valid or self.incidents_read:
            return
        unread = sum(1 for f in self.files if f.error)  # each error is in the report already
        reasons = f"{unread} input(s) not read or stored, see above" if unread else "every row was rejected"
        where = f"; rejected rows are in {self.quarantine}" if self.quarantine else ""
        raise InputError(
            f"nothing valid was read from {len(self.files)} input(s), {self.read} row(s) read "
            f"({reasons}){where}",
            hint="check the format (--format), the columns ts/service/metric/value and the quarantine file",
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "read": self.read,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "rejected": dict(self.rejected),
            "incidents_inserted": self.incidents_inserted,
            "quarantine": str(self.quarantine) if self.quarantine else None,
            "files": [
                {
                    "path": str(f.path),
                    "format": f.format,
                    "content": f.content,
                    "read": f.read,
                    "inserted": f.inserted,
                    "duplicates": f.duplicates,
                    "conflicts": f.conflicts,
                    "rejected": dict(f.rejected),
                    "incidents_read": f.incidents_read,
                    "incidents_inserted": f.incidents_inserted,
                    "error": f.error,
                }
                for f in self.files
            ],
        }


def ingest(
    paths: Sequence[Path],
    *,
    db: Path,
    quarantine_dir: Path,
    fmt: str | None = None,
    default_ts: datetime | None = None,
    progress: bool = False,
    large_input_bytes: int = LARGE_INPUT_BYTES,
) -> IngestReport:
    """Ingest files/folders into the store at ``db``; bad rows and unreadable inputs are reported,
    not raised, so one broken file does not stop the others (see ``IngestReport.check``).

    With ``progress``, a bar counts the inputs when there are several, and an input of at least
    ``large_input_bytes`` gets a bar of its steps (read, validate, write).
    """
    from tqdm import tqdm

    inputs = expand_paths(paths, fmt)
    reports: list[FileReport] = []
    quarantined: list[pl.DataFrame] = []
    with TelemetryStore(db):  # fail fast when another process holds the file; creates the schema
        pass
    finished = False
    try:
        for path, kind in tqdm(inputs, desc="ingest", unit="file", disable=not progress or len(inputs) < 2):
            report = FileReport(path=path, format=kind)
            reports.append(report)
            show_steps = progress and _is_large(path, kind, large_input_bytes)
            with _steps(path, show_steps) as step:
                _ingest_one(report, db, default_ts, step, quarantined)
        finished = True
    finally:
        quarantine = _write_quarantine(quarantine_dir, quarantined) if quarantined else None
        if quarantine is not None and not finished:
            log.warning("ingest stopped early; the rows it rejected so far are in %s", quarantine)
    return IngestReport(reports, quarantine)


def _ingest_one(
    report: FileReport,
    db: Path,
    default_ts: datetime | None,
    step: Step,
    quarantined: list[pl.DataFrame],
) -> None:
    """Read, validate and store one input, filling its report. An input that cannot be read or
    stored is reported (``report.error``) and leaves nothing behind; its rejected rows still go to
    the quarantine. Only a lock taken by another process mid-run stops the run."""
    step("read")
    try:
        result = read_path(report.path, report.format, default_ts=default_ts, on_step=step)
    except InputError as exc:
        report.error = f"not read: {exc}"
        log.debug("skipped %s: %s", report.path, exc)  # the report shows it; a warning would repeat it
        return
    report.read, report.content = result.read, result.content
    report.rejected = Counter(result.rejects["reason"].to_list())
    if result.rejects.height:
        quarantined.append(result.rejects.select("file", "line", "reason", "raw"))
    step("write")
    try:
        with TelemetryStore(db) as store, store.transaction():  # held only to write this input
            written = store.write_points(result.points, source=result.source)
            incidents = store.insert_incidents(result.incidents) if result.incidents is not None else 0
    except StoreLockedError:
        raise
    except EngineError as exc:
        report.error = f"not stored: {exc}"
        log.debug("did not store %s: %s", report.path, exc)
        return
    report.inserted, report.duplicates = written.inserted, written.duplicates
    report.conflicts = written.conflicts.height
    if result.incidents is not None:
        report.incidents_read, report.incidents_inserted = result.incidents.height, incidents
    if written.conflicts.height:
        quarantined.append(_conflict_rows(result, written))


def _conflict_rows(result: ReadResult, written: PointsWrite) -> pl.DataFrame:
    """Quarantine lines for conflicting values: the input's file and line, the raw text of that
    line when the format is text (else the point as JSON), and both values."""
    points = result.points
    rows = written.conflicts.with_columns(
        file=points["file"].gather(written.conflicts["row"])
        if "file" in points.columns
        else pl.lit(str(result.path)),
        line=points["line"].gather(written.conflicts["row"]).cast(pl.Int64),
    )
    if result.format in TEXT_FORMATS:
        raw = line_texts(rows)
    else:
        raw = rows.select(
            pl.struct("ts", "service", "metric", "value", "labels").struct.json_encode()
        ).to_series()
    return rows.select(
        "file",
        "line",
        reason=pl.lit("conflicting_value"),
        raw=raw,
        stored=pl.col("stored"),
        value=pl.col("value"),
    )


def _is_large(path: Path, fmt: str, large_bytes: int) -> bool:
    """Worth a progress bar of its own: many bytes (a file, or a NAB folder's files), or a Parquet
    file of many rows (its footer says how many without reading the data)."""
    if path.is_file():
        if path.stat().st_size >= large_bytes:
            return True
        if fmt == "parquet":
            try:
                return pl.scan_parquet(path).select(pl.len()).collect().item() >= LARGE_INPUT_ROWS
            except (pl.exceptions.PolarsError, OSError):
                return False  # the reader reports what is wrong with the file
        return False
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) >= large_bytes


@contextmanager
def _steps(path: Path, show: bool) -> Iterator[Step]:
    """A ``Step`` callback that moves a tqdm bar (to stderr) through read → validate → write."""
    if not show:
        yield no_step
        return
    from tqdm import tqdm

    names = ("read", "validate", "write")
    with tqdm(total=len(names), desc=path.name, unit="step", leave=False) as bar:

        def step(name: str) -> None:
            if name in names:
                bar.n = names.index(name)
                bar.set_postfix_str(name)  # refreshes the bar

        yield step
        bar.n = len(names)
        bar.refresh()


def _write_quarantine(folder: Path, rows: list[pl.DataFrame]) -> Path:
    """One JSON-lines file of every rejected row and conflicting value of the run."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"ingest-{stamp}-{os.getpid()}.jsonl"
    with path.open("wb") as handle:
        for frame in rows:  # conflicts carry two more fields than rejects: one frame at a time
            frame.write_ndjson(handle)
    log.info("quarantined %d row(s) in %s", sum(r.height for r in rows), path)
    return path
